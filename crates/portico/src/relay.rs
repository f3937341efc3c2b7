//! `portico relay`: one simulated link in front of any TCP (and UDP) service,
//! the same relays `portico up` puts between a topology's nodes. It lets a
//! person measure anything (another proxy, their own service) behind the
//! delays a topology uses; `scripts/probe-peer.sh` uses it to put nginx on
//! Frankfurt's path.

use std::net::SocketAddr;

use portico_config::topology::LinkParams;
use portico_netsim::{Link, NetsimError, TcpRelay, Timing, UdpRelay, duration_from_millis};

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
    let (tcp, udp) = bind(listen, to, udp, &link).await?;
    let tcp = tcp.with_timing(Timing::Precise);
    let local = tcp.local_addr();
    println!("listening tcp {local}");
    let udp = match udp {
        Some(udp) => {
            println!("listening udp {}", udp.local_addr());
            Some(udp.with_timing(Timing::Precise).spawn())
        }
        None => None,
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

/// How often a relay on port 0 draws again when the port TCP got is taken
/// for UDP (as a topology's entries and listeners do).
const TWIN_ATTEMPTS: usize = 16;

/// The TCP relay on `listen`, and with `udp` a UDP relay on the same port,
/// as an HTTP/3 entry of a topology. With port 0 the kernel picks TCP's
/// port, which a UDP socket may hold already: then both are bound again.
async fn bind(
    listen: SocketAddr,
    to: SocketAddr,
    udp: bool,
    link: &Link,
) -> Result<(TcpRelay, Option<UdpRelay>), AppError> {
    let retry = listen.port() == 0;
    bind_from(std::iter::repeat(listen), retry, to, udp, link).await
}

/// [`bind`], TCP on each address `listens` offers in turn.
async fn bind_from(
    listens: impl Iterator<Item = SocketAddr>,
    retry: bool,
    to: SocketAddr,
    udp: bool,
    link: &Link,
) -> Result<(TcpRelay, Option<UdpRelay>), AppError> {
    let mut attempt = 0;
    for listen in listens {
        attempt += 1;
        let tcp = TcpRelay::bind(listen, to, link.clone()).await?;
        if !udp {
            return Ok((tcp, None));
        }
        match UdpRelay::bind(tcp.local_addr(), to, link.clone()).await {
            Ok(udp) => return Ok((tcp, Some(udp))),
            Err(NetsimError::Bind { source, .. })
                if retry
                    && attempt < TWIN_ATTEMPTS
                    && source.kind() == std::io::ErrorKind::AddrInUse => {}
            Err(err) => return Err(err.into()),
        }
    }
    Err(AppError::Usage("no address to listen on".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP socket holding the port TCP got: with port 0 both are bound
    /// again elsewhere, on one port; a port given by hand is an error.
    #[tokio::test]
    async fn a_relays_udp_twin_draws_again_when_its_port_is_taken() {
        let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let taken = holder.local_addr().unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let link = args(0.0, 0.0, 0.0, None).link().unwrap();
        let offers = std::iter::once(taken).chain(std::iter::repeat(any));
        let (tcp, udp) = bind_from(offers, true, to, true, &link).await.unwrap();
        let udp = udp.unwrap();
        assert_ne!(tcp.local_addr().port(), taken.port());
        assert_eq!(tcp.local_addr().port(), udp.local_addr().port());
        let offers = std::iter::once(taken).chain(std::iter::repeat(any));
        let err = bind_from(offers, false, to, true, &link)
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains(&taken.to_string()), "{err}");
    }

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
