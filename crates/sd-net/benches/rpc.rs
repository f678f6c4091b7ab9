//! RPC round trip latency on loopback: `cargo bench -p sd-net --bench rpc`.
//!
//! Two endpoints of a throwaway cluster; one calls the other sequentially with a small request
//! and the figures are the percentiles of the measured round trips (target: p50 < 200 µs,
//! p99 < 2 ms).

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use sd_net::{BoxFuture, Endpoint, Identity, PeerName, Service};

const WARM_UP: usize = 1_000;
const CALLS: usize = 20_000;
const DEADLINE: Duration = Duration::from_secs(5);

struct Echo;

impl Service for Echo {
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    fn handle(&self, _peer: PeerName, request: Vec<u8>) -> BoxFuture<'static, Vec<u8>> {
        Box::pin(async move { request })
    }
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut identities = Identity::ephemeral("bench", &["a", "b"])?.into_iter();
    let (Some(a), Some(b)) = (identities.next(), identities.next()) else {
        anyhow::bail!("two identities expected");
    };
    let a = Endpoint::bind(a, loopback, Arc::new(Echo)).await?;
    let b = Endpoint::bind(b, loopback, Arc::new(Echo)).await?;
    let addr = b.local_addr();
    let request = vec![7u8; 64];

    for _ in 0..WARM_UP {
        a.call("b", addr, &request, DEADLINE).await?;
    }
    let mut latencies = Vec::with_capacity(CALLS);
    let started = Instant::now();
    for _ in 0..CALLS {
        let call = Instant::now();
        a.call("b", addr, &request, DEADLINE).await?;
        latencies.push(call.elapsed());
    }
    let total = started.elapsed();
    latencies.sort_unstable();
    let percentile = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(CALLS - 1)];
    println!(
        "rpc round trip, {CALLS} sequential calls of 64 bytes on loopback: \
         p50 {:?}, p99 {:?}, max {:?}, {:.0} calls/s",
        percentile(0.50),
        percentile(0.99),
        latencies[CALLS - 1],
        CALLS as f64 / total.as_secs_f64()
    );

    // Throughput with 64 callers sharing the one connection.
    let concurrent = 64;
    let per_caller = CALLS / concurrent;
    let started = Instant::now();
    let callers = (0..concurrent).map(|_| {
        let a = a.clone();
        let request = request.clone();
        tokio::spawn(async move {
            for _ in 0..per_caller {
                a.call("b", addr, &request, DEADLINE).await?;
            }
            anyhow::Ok(())
        })
    });
    for caller in futures::future::join_all(callers).await {
        caller??;
    }
    println!(
        "{concurrent} concurrent callers: {:.0} calls/s",
        (concurrent * per_caller) as f64 / started.elapsed().as_secs_f64()
    );
    a.close().await;
    b.close().await;
    Ok(())
}
