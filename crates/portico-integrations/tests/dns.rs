//! Backend name resolution against an in-process DNS server on port 0:
//! answers are cached for their TTL, and the hosts file is honoured.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_resolver::proto::op::{Message, MessageType};
use hickory_resolver::proto::rr::rdata::A;
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use portico_integrations::{DnsSettings, Resolver};
use tokio::net::UdpSocket;

/// Answers A queries for `*.test` with 127.0.0.1 and `ttl`, counting A queries per name.
async fn dns_server(ttl: u32) -> (SocketAddr, Arc<AtomicUsize>) {
    dns_server_of(ttl, &[Ipv4Addr::LOCALHOST]).await
}

/// [`dns_server`] answering with `ips`.
async fn dns_server_of(ttl: u32, ips: &[Ipv4Addr]) -> (SocketAddr, Arc<AtomicUsize>) {
    let ips = ips.to_vec();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let queries = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&queries);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            let Ok(request) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut response = Message::response(request.metadata.id, request.metadata.op_code);
            response.metadata.message_type = MessageType::Response;
            response.metadata.authoritative = true;
            response.metadata.recursion_desired = request.metadata.recursion_desired;
            for query in &request.queries {
                response.queries.push(query.clone());
                if query.query_type() == RecordType::A {
                    counter.fetch_add(1, Ordering::SeqCst);
                    for ip in &ips {
                        let rdata = RData::A(A(*ip));
                        response
                            .answers
                            .push(Record::from_rdata(query.name().clone(), ttl, rdata));
                    }
                }
            }
            if let Ok(bytes) = response.to_vec() {
                let _ = socket.send_to(&bytes, peer).await;
            }
        }
    });
    (addr, queries)
}

fn resolver(server: SocketAddr) -> Resolver {
    Resolver::new(&DnsSettings {
        nameservers: Some(vec![server]),
        use_hosts_file: false,
        cache_size: 64,
    })
    .unwrap()
}

#[tokio::test]
async fn answers_are_cached_within_their_ttl() {
    let (server, queries) = dns_server(300).await;
    let resolver = resolver(server);
    let first = resolver.lookup("svc.test.").await.unwrap();
    assert_eq!(first[0].ip(), Ipv4Addr::LOCALHOST);
    let before = queries.load(Ordering::SeqCst);
    assert!(before >= 1);
    for _ in 0..5 {
        resolver.lookup("svc.test.").await.unwrap();
    }
    assert_eq!(
        queries.load(Ordering::SeqCst),
        before,
        "a cached answer was asked again"
    );
}

#[tokio::test]
async fn each_lookup_starts_at_the_next_address_of_the_answer() {
    let ips = [Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)];
    let (server, queries) = dns_server_of(300, &ips).await;
    let r = resolver(server);
    let mut firsts = Vec::new();
    for _ in 0..4 {
        let addrs = r.lookup("two.test").await.unwrap();
        assert_eq!(addrs.len(), 2, "{addrs:?}");
        firsts.push(addrs[0].ip());
    }
    // New connections go to each address in turn, from one cached answer.
    assert_ne!(firsts[0], firsts[1], "{firsts:?}");
    assert_eq!((firsts[0], firsts[1]), (firsts[2], firsts[3]));
    assert_eq!(queries.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn answers_are_asked_again_after_their_ttl() {
    let (server, queries) = dns_server(1).await;
    let resolver = resolver(server);
    resolver.lookup("short.test.").await.unwrap();
    let before = queries.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    resolver.lookup("short.test.").await.unwrap();
    assert!(
        queries.load(Ordering::SeqCst) > before,
        "an expired answer was not asked again"
    );
}

#[tokio::test]
async fn the_hosts_file_is_honoured_without_name_servers() {
    let resolver = Resolver::new(&DnsSettings {
        nameservers: Some(Vec::new()),
        use_hosts_file: true,
        cache_size: 64,
    })
    .unwrap();
    let addrs = resolver.lookup("localhost").await.unwrap();
    assert!(addrs.iter().any(|a| a.ip().is_loopback()), "{addrs:?}");
}

#[tokio::test]
async fn unknown_names_are_errors_not_panics() {
    let resolver = Resolver::new(&DnsSettings {
        nameservers: Some(Vec::new()),
        use_hosts_file: true,
        cache_size: 64,
    })
    .unwrap();
    let err = resolver.lookup("no-such-host.invalid").await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("DNS resolver: no-such-host.invalid:"),
        "{err}"
    );
}
