//! A short session with the blocking client.
//!
//! ```text
//! cargo run -p corekv-net --example blocking -- 127.0.0.1:7380
//! ```

use std::time::Duration;

use corekv_net::client::blocking::Client;
use corekv_net::client::{ClientConfig, ClientError, Pipeline, SetCondition, SetOptions};

fn main() {
    if let Err(err) = run() {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), ClientError> {
    let seed = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:7380".to_owned());
    let mut client = Client::connect(seed.as_str(), ClientConfig::default())?;
    let topology = client.topology()?;
    println!("connected to {seed}: {} shards", topology.shard_count());
    for (shard, endpoint) in topology.endpoints().enumerate() {
        println!("  shard {shard}: {endpoint}");
    }

    client.ping()?;
    println!("ping: ok");
    let stored = client.set("greeting", "hello", SetOptions::default())?;
    println!("set greeting = hello: {stored}");
    println!("get greeting: {:?}", client.get("greeting")?);
    let nx = SetOptions {
        condition: SetCondition::IfAbsent,
        ttl: Some(Duration::from_secs(60)),
    };
    println!("set greeting NX: {}", client.set("greeting", "ignored", nx)?);

    client.mset(&[("fruit:1", "apple"), ("fruit:2", "pear"), ("fruit:3", "plum")])?;
    let fruits = client.mget(&["fruit:3", "fruit:404", "fruit:1"])?;
    println!("mget fruit:3 fruit:404 fruit:1: {fruits:?}");

    println!("incr visits: {}", client.incr("visits", 1)?);
    println!(
        "cas greeting hello -> bonjour: {}",
        client.cas("greeting", "hello", "bonjour", None)?
    );
    println!(
        "cas greeting hello -> hola: {}",
        client.cas("greeting", "hello", "hola", None)?
    );
    println!(
        "expire greeting 30 s: {}",
        client.expire("greeting", Some(Duration::from_secs(30)))?
    );
    println!("ttl greeting: {:?}", client.ttl("greeting")?);
    println!("exists greeting: {}", client.exists("greeting")?);

    let mut pipeline = Pipeline::new();
    for i in 0..1000 {
        pipeline.incr(format!("counter:{}", i % 10), 1);
    }
    let results = client.execute(&pipeline);
    let failed = results.iter().filter(|r| r.is_err()).count();
    println!("pipeline of {} INCRs: {failed} failed", results.len());

    println!("del greeting: {}", client.del("greeting")?);
    Ok(())
}
