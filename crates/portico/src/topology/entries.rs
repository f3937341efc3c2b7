//! The sockets of a topology's entry points, bound before anything starts: a
//! fixed port (`base_port`) in use refuses the topology at once, and a port
//! picked by the system is held until its relay takes it over.

use std::net::SocketAddr;

use portico_config::topology::{BasePort, Entry, Topology};
use tokio::net::{TcpListener, UdpSocket};

use super::UpError;

/// How often a free TCP port is tried for one whose UDP twin is taken.
const ATTEMPTS: usize = 32;

/// One entry's sockets: TCP always, UDP on the same port number for HTTP/3.
pub struct EntrySockets {
    pub tcp: TcpListener,
    pub udp: Option<UdpSocket>,
}

/// Binds every entry of `t`, in order.
pub async fn bind(t: &Topology) -> Result<Vec<EntrySockets>, UpError> {
    let mut out = Vec::new();
    for e in &t.entries {
        out.push(bind_one(t, e).await?);
    }
    Ok(out)
}

async fn bind_one(t: &Topology, e: &Entry) -> Result<EntrySockets, UpError> {
    let fixed = e.port.unwrap_or(0);
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let addr: SocketAddr = ([127, 0, 0, 1], fixed).into();
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| in_use(t, e, fixed, source))?;
        if !t.http3 {
            return Ok(EntrySockets { tcp, udp: None });
        }
        let port = tcp
            .local_addr()
            .map_err(|source| in_use(t, e, fixed, source))?
            .port();
        match UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], port))).await {
            Ok(udp) => {
                return Ok(EntrySockets {
                    tcp,
                    udp: Some(udp),
                });
            }
            // A free TCP port says nothing of UDP: with port 0, try another.
            Err(source) if fixed == 0 => last = Some((port, source)),
            Err(source) => return Err(in_use(t, e, port, source)),
        }
    }
    let (port, source) = last.unwrap_or((0, std::io::Error::other("no attempt made")));
    Err(in_use(t, e, port, source))
}

fn in_use(t: &Topology, e: &Entry, port: u16, source: std::io::Error) -> UpError {
    let base = t.base_port.unwrap_or(BasePort {
        port: 0,
        line: 1,
        column: 1,
    });
    UpError::PortInUse {
        file: t.file.clone(),
        line: base.line,
        column: base.column,
        port,
        site: t.sites[e.site].name.clone(),
        api: t.apis[e.api].name.clone(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPOLOGY: &str = "[topology]\nhttp3 = true\n[[regions]]\nname = \"r\"\norigin = \"o\"\n\
                            backends = [\"b\"]\n[[sites]]\nname = \"s\"\n[[links]]\n\
                            between = [\"s\", \"o\"]\n[[apis]]\nname = \"a\"\nendpoint = \"regional\"\n";

    #[tokio::test]
    async fn http3_entries_hold_tcp_and_udp_on_one_port_number() {
        let t = portico_config::parse_topology(TOPOLOGY, "t.toml", "t").unwrap();
        let sockets = bind(&t).await.unwrap();
        let tcp = sockets[0].tcp.local_addr().unwrap();
        let udp = sockets[0].udp.as_ref().unwrap().local_addr().unwrap();
        assert_eq!(tcp, udp);
    }

    #[tokio::test]
    async fn a_fixed_port_whose_udp_twin_is_taken_is_refused() {
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let text = TOPOLOGY.replace("http3 = true", &format!("http3 = true\nbase_port = {port}"));
        let t = portico_config::parse_topology(&text, "t.toml", "t").unwrap();
        let err = bind(&t).await.err().unwrap().to_string();
        let expected =
            format!("t.toml:3:13: port {port} (entry of site `s` for API `a`) is already in use: ");
        assert!(err.starts_with(&expected), "{err}");
    }
}
