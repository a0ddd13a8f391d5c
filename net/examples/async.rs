//! A short session with the tokio client (feature `tokio`).
//!
//! ```text
//! cargo run -p corekv-net --features tokio --example async -- 127.0.0.1:7380
//! ```

use std::time::Duration;

use corekv_net::client::tokio::Client;
use corekv_net::client::{ClientConfig, ClientError, SetOptions};

#[tokio::main]
async fn main() {
    if let Err(err) = run().await {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), ClientError> {
    let seed = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:7380".to_owned());
    let client = Client::connect(seed.as_str(), ClientConfig::default()).await?;
    println!("connected to {seed}: {} shards", client.topology().await?.shard_count());

    client.ping().await?;
    println!("ping: ok");
    println!(
        "set greeting = hello: {}",
        client.set("greeting", "hello", SetOptions::default()).await?
    );
    println!("get greeting: {:?}", client.get("greeting").await?);

    client.mset(&[("fruit:1", "apple"), ("fruit:2", "pear")]).await?;
    println!("mget: {:?}", client.mget(&["fruit:2", "fruit:404", "fruit:1"]).await?);
    println!(
        "cas greeting hello -> bonjour: {}",
        client.cas("greeting", "hello", "bonjour", None).await?
    );
    println!(
        "expire greeting 30 s: {}",
        client.expire("greeting", Some(Duration::from_secs(30))).await?
    );
    println!("ttl greeting: {:?}", client.ttl("greeting").await?);

    // Concurrent calls from many tasks pipeline over each shard's connection.
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                for _ in 0..100 {
                    client.incr("visits", 1).await?;
                }
                Ok::<(), ClientError>(())
            })
        })
        .collect();
    for task in tasks {
        match task.await {
            Ok(result) => result?,
            Err(err) => eprintln!("task failed: {err}"),
        }
    }
    println!(
        "visits after 16 x 100 concurrent INCRs: {}",
        client.incr("visits", 0).await?
    );
    println!("del greeting: {}", client.del("greeting").await?);
    Ok(())
}
