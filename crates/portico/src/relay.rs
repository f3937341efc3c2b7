//! `portico relay`: one simulated link in front of any TCP (and UDP) service,
//! the same relays `portico up` puts between a topology's nodes. It lets a
//! person measure anything (another proxy, their own service) behind the
//! delays a topology uses; `scripts/probe-peer.sh` uses it to put nginx on
//! Frankfurt's path.

use std::net::SocketAddr;

use portico_config::topology::LinkParams;
use portico_netsim::{Link, TcpRelay, Timing, UdpRelay, duration_from_millis};

use crate::AppError;
use crate::topology::relays;

/// The link's characteristics, the same each way (as a topology's `[[links]]`).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct LinkArgs {
    /// One-way delay in milliseconds.
    #[arg(long, default_value_t = 0.0)]
    pub delay_ms: f64,
    /// Uniform jitter in milliseconds: each packet's delay is delay ± jitter.
    #[arg(long, default_value_t = 0.0)]
    pub jitter_ms: f64,
    /// Probability that a UDP datagram is lost (TCP is reliable: ignored there).
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Bandwidth each way in megabits per second (default: unlimited).
    #[arg(long)]
    pub bandwidth_mbps: Option<f64>,
}

impl LinkArgs {
    /// The netsim link, or the error that names the bad value. Values are
    /// checked by the same rules as a topology's `[[links]]`.
    pub fn link(&self) -> Result<Link, AppError> {
        let bandwidth_bps = self
            .bandwidth_mbps
            .map(LinkParams::bandwidth_bps_from_mbps)
            .transpose()
            .map_err(|why| AppError::Usage(format!("--bandwidth-mbps {why}")))?;
        let link = relays::link(&LinkParams {
            delay: duration_from_millis("delay", self.delay_ms)?,
            jitter: duration_from_millis("jitter", self.jitter_ms)?,
            loss: self.loss,
            bandwidth_bps,
        });
        link.validate()?;
        Ok(link)
    }
}

/// Relays TCP connections (and UDP datagrams with `udp`, on the same port) from
/// `listen` to `to` until Ctrl-C or SIGTERM. Prints `listening tcp ADDR` (and
/// `listening udp ADDR`), then `ready`, on stdout.
pub async fn run(
    listen: SocketAddr,
    to: SocketAddr,
    udp: bool,
    args: LinkArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let link = args.link()?;
    let tcp = TcpRelay::bind(listen, to, link.clone())
        .await?
        .with_timing(Timing::Precise);
    let local = tcp.local_addr();
    println!("listening tcp {local}");
    let udp = if udp {
        // The same port as TCP, as an HTTP/3 entry of a topology.
        let udp = UdpRelay::bind(local, to, link).await?;
        println!("listening udp {}", udp.local_addr());
        Some(udp.with_timing(Timing::Precise).spawn())
    } else {
        None
    };
    let tcp = tcp.spawn();
    println!("ready");
    tracing::info!(%local, %to, delay_ms = args.delay_ms, jitter_ms = args.jitter_ms, "relay running");
    shutdown.await;
    tcp.shutdown().await?;
    if let Some(udp) = udp {
        udp.shutdown().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(delay_ms: f64, jitter_ms: f64, loss: f64, bandwidth_mbps: Option<f64>) -> LinkArgs {
        LinkArgs {
            delay_ms,
            jitter_ms,
            loss,
            bandwidth_mbps,
        }
    }

    #[test]
    fn link_is_symmetric_with_the_given_values() {
        let link = args(2.0, 0.2, 0.01, Some(100.0)).link().unwrap();
        assert_eq!(link.up, link.down);
        assert_eq!(link.up.delay, std::time::Duration::from_millis(2));
        assert_eq!(link.up.jitter, std::time::Duration::from_micros(200));
        assert_eq!(link.up.bandwidth_bps, Some(100_000_000));
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        let err = |a: LinkArgs| a.link().unwrap_err().to_string();
        assert_eq!(
            err(args(-1.0, 0.0, 0.0, None)),
            "delay must be a finite, non-negative number of milliseconds, got -1"
        );
        assert_eq!(
            err(args(1.0, f64::NAN, 0.0, None)),
            "jitter must be a finite, non-negative number of milliseconds, got NaN"
        );
        assert_eq!(
            err(args(1.0, 0.0, 1.5, None)),
            "up direction: loss must be a probability within 0.0..=1.0, got 1.5"
        );
        assert_eq!(
            err(args(1.0, 0.0, 0.0, Some(0.0))),
            "--bandwidth-mbps must be a positive number of megabits per second (at most 1000000), got 0"
        );
    }
}
