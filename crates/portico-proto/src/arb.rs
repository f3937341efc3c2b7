//! proptest strategies for every frame (test-only).

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use crate::frame::*;
use crate::version::{Capabilities, VersionRange};

pub(crate) fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

pub(crate) fn headers() -> impl Strategy<Value = Headers> {
    vec((text(), vec(any::<u8>(), 0..16)), 0..5)
}

fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    vec((text(), text()), 0..4)
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Pop), Just(Role::Origin)]
}

fn versions() -> impl Strategy<Value = VersionRange> {
    (any::<u16>(), any::<u16>()).prop_map(|(min, max)| VersionRange { min, max })
}

fn principal() -> impl Strategy<Value = Principal> {
    (text(), text(), pairs()).prop_map(|(kind, id, claims)| Principal { kind, id, claims })
}

fn tls() -> impl Strategy<Value = TlsInfo> {
    (text(), text(), option::of(text()), option::of(text())).prop_map(
        |(version, cipher, sni, alpn)| TlsInfo {
            version,
            cipher,
            sni,
            alpn,
        },
    )
}

fn client_addr() -> impl Strategy<Value = ClientAddr> {
    (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| ClientAddr { ip, port })
}

pub(crate) fn request_head() -> impl Strategy<Value = RequestHead> {
    let who = (
        text(),
        text(),
        text(),
        headers(),
        option::of(client_addr()),
        option::of(tls()),
    );
    let route = (
        option::of(text()),
        text(),
        text(),
        text(),
        pairs(),
        option::of(principal()),
    );
    (who, route, text(), any::<u32>()).prop_map(|(w, r, pop_id, deadline_ms)| RequestHead {
        request_id: w.0,
        method: w.1,
        uri: w.2,
        headers: w.3,
        client_addr: w.4,
        tls: w.5,
        trace_context: r.0,
        api: r.1,
        stage: r.2,
        route_key: r.3,
        path_params: r.4,
        principal: r.5,
        pop_id,
        deadline_ms,
    })
}

fn reset_code() -> impl Strategy<Value = ResetCode> {
    prop_oneof![
        Just(ResetCode::Cancelled),
        Just(ResetCode::Timeout),
        Just(ResetCode::UpstreamFailed),
        Just(ResetCode::TooLarge),
        Just(ResetCode::Refused),
        Just(ResetCode::Protocol),
        Just(ResetCode::Internal),
    ]
}

fn purge_scope() -> impl Strategy<Value = PurgeScope> {
    prop_oneof![
        text().prop_map(PurgeScope::Url),
        (text(), text(), text()).prop_map(|(api, stage, path_prefix)| PurgeScope::Prefix {
            api,
            stage,
            path_prefix
        }),
        (text(), vec(text(), 0..4)).prop_map(|(api, tags)| PurgeScope::Tag { api, tags }),
        (text(), text()).prop_map(|(api, stage)| PurgeScope::Stage { api, stage }),
        Just(PurgeScope::All),
    ]
}

fn ws_kind() -> impl Strategy<Value = WsKind> {
    prop_oneof![
        Just(WsKind::Text),
        Just(WsKind::Binary),
        Just(WsKind::Ping),
        Just(WsKind::Pong),
        Just(WsKind::Close),
    ]
}

fn usage_entry() -> impl Strategy<Value = UsageEntry> {
    (text(), any::<u64>()).prop_map(|(scope, used)| UsageEntry { scope, used })
}

fn link_frame() -> impl Strategy<Value = Frame> {
    let hello = (text(), role(), text(), versions(), any::<u64>()).prop_map(|t| {
        Frame::Hello(Hello {
            node_id: t.0,
            role: t.1,
            region: t.2,
            versions: t.3,
            capabilities: Capabilities(t.4),
        })
    });
    let ack = (any::<u16>(), text(), role(), text(), any::<u64>()).prop_map(|t| {
        Frame::HelloAck(HelloAck {
            chosen_version: t.0,
            node_id: t.1,
            role: t.2,
            region: t.3,
            capabilities: Capabilities(t.4),
        })
    });
    let ping = any::<u64>().prop_map(|nonce| Frame::Ping(Ping { nonce }));
    let pong = any::<u64>().prop_map(|nonce| Frame::Pong(Pong { nonce }));
    let go_away = (text(), any::<u64>()).prop_map(|(reason, last_stream_hint)| {
        Frame::GoAway(GoAway {
            reason,
            last_stream_hint,
        })
    });
    prop_oneof![hello, ack, ping, pong, go_away]
}

fn request_frame() -> impl Strategy<Value = Frame> {
    let head = request_head().prop_map(|h| Frame::RequestHead(Box::new(h)));
    let chunk = bytes(256).prop_map(Frame::BodyChunk);
    let end = headers().prop_map(|trailers| Frame::End(End { trailers }));
    let reset =
        (reset_code(), text()).prop_map(|(code, reason)| Frame::Reset(Reset { code, reason }));
    let resp = (any::<u16>(), headers(), text()).prop_map(|(status, headers, served_by)| {
        Frame::ResponseHead(ResponseHead {
            status,
            headers,
            served_by,
        })
    });
    prop_oneof![head, chunk, end, reset, resp]
}

fn config_frame() -> impl Strategy<Value = Frame> {
    let snap =
        (any::<u64>(), any::<[u8; 32]>(), text()).prop_map(|(version, hash, definitions)| {
            Frame::ConfigSnapshot(ConfigSnapshot {
                version,
                hash,
                definitions,
            })
        });
    let delta = (
        any::<u64>(),
        any::<u64>(),
        vec((text(), option::of(text())), 0..4),
    )
        .prop_map(|(from_version, to_version, changed)| {
            Frame::ConfigDelta(ConfigDelta {
                from_version,
                to_version,
                changed,
            })
        });
    let request = (option::of(any::<u64>()), text()).prop_map(|(have_version, reason)| {
        Frame::ConfigRequest(ConfigRequest {
            have_version,
            reason,
        })
    });
    let purge = (any::<u64>(), purge_scope())
        .prop_map(|(purge_id, scope)| Frame::Purge(Purge { purge_id, scope }));
    let ack = any::<u64>().prop_map(|purge_id| Frame::PurgeAck(PurgeAck { purge_id }));
    let usage = (text(), any::<u64>(), vec(usage_entry(), 0..4)).prop_map(|t| {
        Frame::UsageReport(UsageReport {
            pop_id: t.0,
            window_start_unix_ms: t.1,
            entries: t.2,
        })
    });
    prop_oneof![snap, delta, request, purge, ack, usage]
}

fn quota_frame() -> impl Strategy<Value = Frame> {
    let req = (
        text(),
        text(),
        any::<u64>(),
        option::of(any::<u64>()),
        any::<u64>(),
    )
        .prop_map(|t| {
            Frame::QuotaLeaseRequest(QuotaLeaseRequest {
                key_id: t.0,
                plan: t.1,
                want: t.2,
                lease_id_to_return: t.3,
                unused: t.4,
            })
        });
    let lease = (
        any::<u64>(),
        text(),
        text(),
        any::<u64>(),
        any::<(u64, u64, bool)>(),
    )
        .prop_map(|t| {
            Frame::QuotaLease(QuotaLease {
                lease_id: t.0,
                key_id: t.1,
                plan: t.2,
                granted: t.3,
                expires_unix_ms: t.4.0,
                period_end_unix_ms: t.4.1,
                exhausted: t.4.2,
            })
        });
    let ret = (any::<u64>(), any::<u64>())
        .prop_map(|(lease_id, unused)| Frame::QuotaReturn(QuotaReturn { lease_id, unused }));
    let rate =
        (text(), any::<u64>(), any::<u64>()).prop_map(|(scope, rate_milli_per_sec, burst)| {
            Frame::RateShare(RateShare {
                scope,
                rate_milli_per_sec,
                burst,
            })
        });
    prop_oneof![req, lease, ret, rate]
}

fn ws_frame() -> impl Strategy<Value = Frame> {
    let open = (any::<u64>(), request_head()).prop_map(|(connection_id, head)| {
        Frame::WsOpen(Box::new(WsOpen {
            connection_id,
            head,
        }))
    });
    let msg = (any::<u64>(), ws_kind(), bytes(128)).prop_map(|(connection_id, kind, payload)| {
        Frame::WsMessage(WsMessage {
            connection_id,
            kind,
            payload,
        })
    });
    let close = (any::<u64>(), any::<u16>(), text()).prop_map(|(connection_id, code, reason)| {
        Frame::WsClose(WsClose {
            connection_id,
            code,
            reason,
        })
    });
    let authz = (
        text(),
        option::of(principal()),
        any::<bool>(),
        any::<u32>(),
        pairs(),
    )
        .prop_map(|t| {
            Frame::AuthorizerDecision(AuthorizerDecision {
                cache_key: t.0,
                principal: t.1,
                allow: t.2,
                ttl_ms: t.3,
                context: t.4,
            })
        });
    prop_oneof![open, msg, close, authz]
}

/// Any frame of any kind.
pub(crate) fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        link_frame(),
        request_frame(),
        config_frame(),
        quota_frame(),
        ws_frame()
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    use super::*;

    #[test]
    fn strategy_reaches_every_kind() {
        let mut runner = TestRunner::deterministic();
        let strategy = frame();
        let mut seen = HashSet::new();
        for _ in 0..5000 {
            seen.insert(strategy.new_tree(&mut runner).unwrap().current().kind());
        }
        assert_eq!(seen.len(), FrameKind::ALL.len());
    }
}
