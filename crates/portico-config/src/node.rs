//! Compiling a node file's own settings, and the role rules that tie them to the
//! API definitions.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::cache::compile_node_cache;
use crate::compile::{DefinitionDefaults, NODE_ID, build_definitions, check_region, is_node_id};
use crate::error::Diag;
use crate::file::{
    AdminFile, BackboneFile, BackendClientFile, CertFile, DnsFile, LimitsFile, ListenerFile,
    NodeFile, NodeThrottleFile, OriginFile, QuotasFile, S, ThrottleFile,
};
use crate::load::RawNode;
use crate::method::{EndpointMode, Role};
use crate::model::CertPaths;
use crate::plans::{check_refill, compile_throttle};
use crate::route::check_timeout;
use crate::settings::{
    AdminConfig, BackboneConfig, BackendClientConfig, DnsConfig, Limits, ListenerConfig,
    NodeConfig, NodeSettings, NodeThrottleConfig, OriginLink, QuotaStore,
};

/// Resolves file paths against the config file's directory and checks they exist.
pub(crate) struct Paths<'a> {
    pub base_dir: &'a Path,
}

impl Paths<'_> {
    fn file(&self, p: &S<String>, diag: &mut Diag<'_>) -> PathBuf {
        let path = self.base_dir.join(p.get_ref());
        if !path.is_file() {
            let message = format!(
                "file `{}` not found (looked at {})",
                p.get_ref(),
                path.display()
            );
            diag.expect(
                p.span(),
                message,
                "a path relative to the config file's directory",
            );
        }
        path
    }

    fn cert(&self, c: &CertFile, diag: &mut Diag<'_>) -> CertPaths {
        CertPaths {
            cert: self.file(&c.cert, diag),
            key: self.file(&c.key, diag),
        }
    }
}

/// Compiles a node file; `None` when anything failed (all reported to `diag`).
/// `home`: the region of APIs that name none, when not the file's `[node]
/// region` (a reload's: the running node's).
pub(crate) fn compile_node(
    mut raw: RawNode,
    paths: &Paths<'_>,
    role: Option<Role>,
    home: Option<&str>,
    diag: &mut Diag<'_>,
) -> Option<NodeConfig> {
    let role = role.unwrap_or(if raw.has_origins {
        Role::Pop
    } else {
        Role::Origin
    });
    let node = compile_node_settings(raw.node.as_ref(), raw.has_node, role, diag).map(|mut n| {
        n.state_dir = state_dir(raw.node.as_ref(), paths);
        n
    });
    let throttle = compile_node_throttle(&raw.throttle, diag);
    let limits = compile_limits(&raw.limits, diag);
    let listeners = compile_listeners(&raw.listeners, paths, diag);
    let admin = raw
        .admin
        .as_ref()
        .and_then(|a| compile_admin(a, paths, diag));
    let backend_client = compile_backend_client(&raw.backend_client, paths, diag);
    let dns = compile_dns(&raw.dns, diag);
    let backbone = raw
        .backbone
        .as_ref()
        .map(|b| compile_backbone(b, role, paths, diag));
    if role == Role::Pop && raw.backbone.is_none() {
        let message = "a PoP needs `[backbone]` (its links to the origins)";
        diag.expect(0..0, message, "[backbone] with `ca`, `cert` and `key`");
    }
    let origins = compile_origins(&raw.origins, diag);
    let cache = compile_node_cache(&raw.cache, diag);
    let quotas = compile_quotas(raw.quotas.as_ref(), role, paths, diag);
    check_role(&raw, role, diag);
    prepare_definitions(&mut raw, paths, home, diag);
    let defaults = DefinitionDefaults {
        timeout: limits
            .as_ref()
            .map_or(Limits::default().default_timeout, |l| l.default_timeout),
    };
    let definitions = build_definitions(&raw.defs, &defaults, diag);
    if role == Role::Origin {
        check_default_apis(&raw, diag);
    }
    if diag.has_errors() {
        return None;
    }
    Some(NodeConfig {
        node: node?,
        listeners,
        admin,
        limits: limits?,
        backend_client: backend_client?,
        dns: dns?,
        backbone: backbone.flatten(),
        origins,
        definitions: Arc::new(definitions?),
        cache: cache?,
        throttle: throttle?,
        quotas: quotas?,
    })
}

/// The key prefix of a shared quota book when none is given.
pub const DEFAULT_QUOTA_PREFIX: &str = "portico:";

/// `[quotas]`: `store = "local"` (the default) or a Redis URL, and for a
/// `rediss://` one its TLS files; an origin's.
fn compile_quotas(
    f: Option<&QuotasFile>,
    role: Role,
    paths: &Paths<'_>,
    diag: &mut Diag<'_>,
) -> Option<QuotaStore> {
    let Some(f) = f else {
        return Some(QuotaStore::Local);
    };
    let key_prefix = match &f.key_prefix {
        Some(p) => {
            let ok = (1..=64).contains(&p.get_ref().len())
                && p.get_ref().bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                let message = format!("invalid key_prefix `{}`", p.get_ref().escape_debug());
                diag.expect(
                    p.span(),
                    message,
                    "1 to 64 visible ASCII characters, such as \"portico:\"",
                );
                return None;
            }
            p.get_ref().clone()
        }
        None => DEFAULT_QUOTA_PREFIX.to_owned(),
    };
    let store = match &f.store {
        None => None,
        Some(s) if s.get_ref() == "local" => None,
        Some(s) => {
            let url = s.get_ref();
            let expected = "\"local\", \"redis://HOST:PORT/DB\", \"rediss://HOST:PORT/DB\" or \"redis+unix:///PATH\"";
            // The client reads `#insecure` as "check no certificate" (which
            // this build cannot do, and refuses at each connection).
            if url.contains('#') {
                let message = "a quota store URL takes no fragment (such as `#insecure`)";
                diag.expect(s.span(), message, expected);
                return None;
            }
            let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
                .iter()
                .any(|scheme| url.starts_with(scheme));
            let read = match scheme_ok {
                true => portico_quota::shared::check_url(url),
                false => Err("not a Redis URL".to_owned()),
            };
            if let Err(why) = read {
                let shown = portico_quota::shared::redacted(url);
                let message = format!("invalid quota store `{shown}`: {why}");
                diag.expect(s.span(), message, expected);
                return None;
            }
            Some(url.clone())
        }
    };
    // TLS files: only for a `rediss://` store; a certificate with its key.
    let tls_url = store.as_deref().is_some_and(|u| u.starts_with("rediss://"));
    for given in [&f.ca, &f.cert, &f.key].into_iter().flatten() {
        if !tls_url {
            let message = "ca, cert and key are for a `rediss://` store";
            diag.expect(given.span(), message, "store = \"rediss://HOST:PORT/DB\"");
            return None;
        }
    }
    let client = match (&f.cert, &f.key) {
        (Some(cert), Some(key)) => Some(crate::CertPaths {
            cert: paths.file(cert, diag),
            key: paths.file(key, diag),
        }),
        (None, None) => None,
        (Some(c), None) => {
            diag.expect(c.span(), "`cert` given without `key`", "both or neither");
            return None;
        }
        (None, Some(k)) => {
            diag.expect(k.span(), "`key` given without `cert`", "both or neither");
            return None;
        }
    };
    let tls = crate::RedisTls {
        ca: f.ca.as_ref().map(|p| paths.file(p, diag)),
        client,
    };
    let store = match (store, &f.key_prefix) {
        (Some(url), _) => QuotaStore::Redis {
            url,
            key_prefix,
            tls,
        },
        (None, None) => QuotaStore::Local,
        (None, Some(p)) => {
            let message = "key_prefix is for a Redis store";
            diag.expect(p.span(), message, "store = \"redis://…\", or no key_prefix");
            return None;
        }
    };
    if role == Role::Pop {
        let span = f.store.as_ref().map_or(0..0, |s| s.span());
        let message = "`[quotas]` is an origin's setting";
        diag.expect(
            span,
            message,
            "no [quotas] in a PoP's file (a PoP leases quotas from its origins)",
        );
        return None;
    }
    Some(store)
}

/// `[node] state_dir`, relative to the config file's directory (need not exist yet).
fn state_dir(f: Option<&NodeFile>, paths: &Paths<'_>) -> PathBuf {
    let dir = f
        .and_then(|f| f.state_dir.as_ref())
        .map_or("portico-state", |d| d.get_ref().as_str());
    paths.base_dir.join(dir)
}

fn compile_node_throttle(f: &NodeThrottleFile, diag: &mut Diag<'_>) -> Option<NodeThrottleConfig> {
    let mut out = NodeThrottleConfig {
        enabled: f.enabled.unwrap_or(true),
        ..NodeThrottleConfig::default()
    };
    let mut ok = true;
    if let Some(r) = &f.rate {
        let t = ThrottleFile {
            rate: r.clone(),
            burst: toml::Spanned::new(r.span(), 1),
        };
        match compile_throttle(&toml::Spanned::new(r.span(), t), diag) {
            Some(t) => out.node.rate = t.rate,
            None => ok = false,
        }
    }
    if let Some(b) = &f.burst {
        let t = ThrottleFile {
            rate: toml::Spanned::new(b.span(), 1.0),
            burst: b.clone(),
        };
        match compile_throttle(&toml::Spanned::new(b.span(), t), diag) {
            Some(t) => out.node.burst = t.burst,
            None => ok = false,
        }
    }
    // Rate and burst were each checked alone: together they must still fit.
    let span = f.rate.as_ref().map(|r| r.span());
    if ok && let Some(span) = span.or_else(|| f.burst.as_ref().map(|b| b.span())) {
        ok = check_refill(out.node, span, diag);
    }
    if let Some(ip) = &f.per_client_ip {
        out.per_client_ip = compile_throttle(ip, diag);
        ok &= out.per_client_ip.is_some();
    }
    ok.then_some(out)
}

fn compile_node_settings(
    file: Option<&NodeFile>,
    present: bool,
    role: Role,
    diag: &mut Diag<'_>,
) -> Option<NodeSettings> {
    let Some(f) = file else {
        if !present {
            diag.expect(
                0..0,
                "missing section `[node]`",
                "[node] with at least `id`",
            );
        }
        return None;
    };
    if !is_node_id(f.id.get_ref()) {
        let message = format!("invalid node id `{}`", f.id.get_ref());
        diag.expect(f.id.span(), message, NODE_ID);
    }
    if let Some(r) = &f.region {
        check_region(r, diag);
    } else if role == Role::Origin {
        diag.expect(
            f.id.span(),
            "an origin's `[node]` needs a `region`",
            "region = \"us-east-1\" or similar",
        );
    }
    Some(NodeSettings {
        id: f.id.get_ref().clone(),
        region: f.region.as_ref().map(|r| r.get_ref().clone()),
        location: f.location.clone(),
        state_dir: PathBuf::new(),
        cpus: f
            .cpus
            .as_ref()
            .map_or_else(Vec::new, |c| compile_cpus(c, diag)),
    })
}

/// The highest CPU number `cpus` may name (Linux's default `CONFIG_NR_CPUS`
/// limit of a `cpu_set_t`).
const MAX_CPU: u64 = 1023;

/// `[node] cpus`: distinct CPU numbers, at least one. Whether this machine
/// has them is checked when the node starts.
fn compile_cpus(list: &S<Vec<S<u64>>>, diag: &mut Diag<'_>) -> Vec<usize> {
    if list.get_ref().is_empty() {
        diag.expect(
            list.span(),
            "`cpus` is empty",
            "CPU numbers such as [0, 1], or no `cpus` for every CPU",
        );
        return Vec::new();
    }
    let mut cpus: Vec<usize> = Vec::with_capacity(list.get_ref().len());
    for cpu in list.get_ref() {
        if !in_range(cpu, 0..=MAX_CPU, "CPU", diag) {
            continue;
        }
        let n = *cpu.get_ref() as usize;
        if cpus.contains(&n) {
            let message = format!("CPU {n} is listed twice");
            diag.expect(cpu.span(), message, "each CPU once");
            continue;
        }
        cpus.push(n);
    }
    cpus
}

fn in_range(
    v: &S<u64>,
    range: std::ops::RangeInclusive<u64>,
    what: &str,
    diag: &mut Diag<'_>,
) -> bool {
    let ok = range.contains(v.get_ref());
    if !ok {
        let message = format!("{what} {} is out of range", v.get_ref());
        diag.expect(
            v.span(),
            message,
            format!("{}..={}", range.start(), range.end()),
        );
    }
    ok
}

fn compile_limits(f: &LimitsFile, diag: &mut Diag<'_>) -> Option<Limits> {
    let mut limits = Limits::default();
    let mut ok = true;
    if let Some(v) = &f.max_body_bytes {
        ok &= in_range(v, 1..=u64::MAX, "max_body_bytes", diag);
        limits.max_body_bytes = *v.get_ref();
    }
    if let Some(v) = &f.max_header_bytes {
        ok &= in_range(v, 1024..=1024 * 1024, "max_header_bytes", diag);
        limits.max_header_bytes = usize::try_from(*v.get_ref()).unwrap_or(usize::MAX);
    }
    if let Some(v) = &f.default_timeout_ms {
        match check_timeout(v, diag) {
            Some(t) => limits.default_timeout = t,
            None => ok = false,
        }
    }
    if let Some(v) = &f.max_connections {
        ok &= in_range(v, 1..=1_000_000, "max_connections", diag);
        limits.max_connections = usize::try_from(*v.get_ref()).unwrap_or(usize::MAX);
    }
    if let Some(v) = &f.max_connections_per_client {
        ok &= in_range(v, 0..=1_000_000, "max_connections_per_client", diag);
        limits.max_connections_per_client = usize::try_from(*v.get_ref()).unwrap_or(usize::MAX);
    }
    if let Some(v) = &f.upstream_read_timeout_ms {
        ok &= in_range(v, 100..=3_600_000, "upstream_read_timeout_ms", diag);
        limits.upstream_read_timeout = Duration::from_millis(*v.get_ref());
    }
    if let Some(v) = &f.send_timeout_ms {
        ok &= in_range(v, 100..=3_600_000, "send_timeout_ms", diag);
        limits.send_timeout = Duration::from_millis(*v.get_ref());
    }
    if let Some(v) = &f.upload_timeout_ms {
        ok &= in_range(v, 100..=3_600_000, "upload_timeout_ms", diag);
        limits.upload_timeout = Duration::from_millis(*v.get_ref());
    }
    ok.then_some(limits)
}

fn compile_listeners(
    files: &[ListenerFile],
    paths: &Paths<'_>,
    diag: &mut Diag<'_>,
) -> Vec<ListenerConfig> {
    let mut seen: HashMap<std::net::SocketAddr, usize> = HashMap::new();
    let mut out = Vec::new();
    for f in files {
        let address = *f.address.get_ref();
        // Port 0 asks for any free port: two such listeners never collide.
        if address.port() != 0
            && let Some(first) = seen.get(&address)
        {
            let message = format!("duplicate listener address {address} (first at line {first})");
            diag.at(f.address.span(), message);
        }
        seen.insert(address, diag.line_of(&f.address.span()));
        let http3 = f.http3.as_ref().is_some_and(|h| *h.get_ref());
        if let (Some(h), false, true) = (&f.http3, f.tls, http3) {
            diag.expect(h.span(), "http3 needs TLS", "tls = true, or http3 = false");
        }
        if let (false, Some(c)) = (f.tls, f.certificates.first()) {
            diag.expect(
                c.cert.span(),
                "certificates given for a listener with tls = false",
                "tls = true",
            );
        }
        out.push(ListenerConfig {
            address,
            tls: f.tls,
            default_api: f.default_api.as_ref().map(|a| a.get_ref().clone()),
            certificates: f.certificates.iter().map(|c| paths.cert(c, diag)).collect(),
            http3,
            quic: crate::quic::compile_quic(f.quic.as_ref(), http3, diag),
            proxy_protocol: compile_proxy_protocol(f, diag),
        });
    }
    out
}

/// `proxy_protocol` and the peers that may send it (`proxy_protocol_from`:
/// addresses or CIDRs; an address alone is its /32 or /128).
fn compile_proxy_protocol(f: &ListenerFile, diag: &mut Diag<'_>) -> Option<Vec<ipnet::IpNet>> {
    let on = f.proxy_protocol.as_ref().is_some_and(|p| *p.get_ref());
    let mut from = Vec::new();
    for peer in &f.proxy_protocol_from {
        let text = peer.get_ref().trim();
        let net = text.parse::<ipnet::IpNet>().ok().or_else(|| {
            text.parse::<std::net::IpAddr>()
                .ok()
                .map(ipnet::IpNet::from)
        });
        match net {
            Some(net) => from.push(net.trunc()),
            None => diag.expect(
                peer.span(),
                format!("invalid proxy_protocol_from entry `{text}`"),
                "an IP address or a CIDR such as \"10.0.0.0/8\"",
            ),
        }
    }
    if let (false, Some(first)) = (on, f.proxy_protocol_from.first()) {
        diag.expect(
            first.span(),
            "proxy_protocol_from given for a listener without the PROXY protocol",
            "proxy_protocol = true",
        );
    }
    on.then_some(from)
}

fn compile_admin(f: &AdminFile, paths: &Paths<'_>, diag: &mut Diag<'_>) -> Option<AdminConfig> {
    let (token, token_file) = admin_token(f, paths, diag)?;
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        let at = f
            .token
            .as_ref()
            .or(f.token_file.as_ref())
            .map_or(0..0, |s| s.span());
        diag.expect(
            at,
            "invalid admin token",
            "a non-empty token of visible ASCII characters",
        );
        return None;
    }
    Some(AdminConfig {
        address: *f.address.get_ref(),
        token,
        token_file,
    })
}

/// The token, from `token` or read from `token_file` (exactly one of them).
fn admin_token(
    f: &AdminFile,
    paths: &Paths<'_>,
    diag: &mut Diag<'_>,
) -> Option<(String, Option<PathBuf>)> {
    match (&f.token, &f.token_file) {
        (Some(t), None) => Some((t.get_ref().clone(), None)),
        (None, Some(p)) => {
            let path = paths.file(p, diag);
            match std::fs::read_to_string(&path) {
                Ok(text) => Some((text.trim().to_owned(), Some(path))),
                Err(e) => {
                    if path.is_file() {
                        diag.at(p.span(), format!("cannot read `{}`: {e}", p.get_ref()));
                    }
                    None
                }
            }
        }
        (Some(_), Some(p)) => {
            diag.expect(
                p.span(),
                "give either `token` or `token_file`, not both",
                "one of them",
            );
            None
        }
        (None, None) => {
            diag.expect(
                f.address.span(),
                "`[admin]` needs a token",
                "`token` or `token_file`",
            );
            None
        }
    }
}

fn compile_backend_client(
    f: &BackendClientFile,
    paths: &Paths<'_>,
    diag: &mut Diag<'_>,
) -> Option<BackendClientConfig> {
    let d = BackendClientConfig::default();
    let mut ok = true;
    let connect_timeout = match &f.connect_timeout_ms {
        Some(v) => {
            ok &= in_range(v, 1..=120_000, "connect_timeout_ms", diag);
            Duration::from_millis(*v.get_ref())
        }
        None => d.connect_timeout,
    };
    let pool_idle_timeout = match &f.pool_idle_timeout_ms {
        Some(v) => {
            ok &= in_range(v, 0..=86_400_000, "pool_idle_timeout_ms", diag);
            Duration::from_millis(*v.get_ref())
        }
        None => d.pool_idle_timeout,
    };
    let http2_keep_alive_interval = match &f.http2_keep_alive_interval_ms {
        Some(v) if *v.get_ref() == 0 => None,
        Some(v) => {
            ok &= in_range(v, 1_000..=3_600_000, "http2_keep_alive_interval_ms", diag);
            Some(Duration::from_millis(*v.get_ref()))
        }
        None => d.http2_keep_alive_interval,
    };
    let http2_keep_alive_timeout = match &f.http2_keep_alive_timeout_ms {
        Some(v) => {
            ok &= in_range(v, 100..=600_000, "http2_keep_alive_timeout_ms", diag);
            Duration::from_millis(*v.get_ref())
        }
        None => d.http2_keep_alive_timeout,
    };
    let pool_max_lifetime = match &f.pool_max_lifetime_ms {
        Some(v) if *v.get_ref() == 0 => None,
        Some(v) => {
            ok &= in_range(v, 1_000..=86_400_000, "pool_max_lifetime_ms", diag);
            Some(Duration::from_millis(*v.get_ref()))
        }
        None => d.pool_max_lifetime,
    };
    // The client refuses to start with no root to verify https backends by.
    let off = f.use_webpki_roots.as_ref().filter(|u| !*u.get_ref());
    if let Some(off) = off.filter(|_| f.ca_file.is_none()) {
        let message = "use_webpki_roots = false leaves no CA to verify https backends against";
        diag.expect(off.span(), message, "a ca_file, or use_webpki_roots = true");
        ok = false;
    }
    let config = BackendClientConfig {
        ca_file: f.ca_file.as_ref().map(|p| paths.file(p, diag)),
        use_webpki_roots: f
            .use_webpki_roots
            .as_ref()
            .map_or(d.use_webpki_roots, |u| *u.get_ref()),
        pool_idle_timeout,
        pool_max_idle_per_host: f.pool_max_idle_per_host.unwrap_or(d.pool_max_idle_per_host),
        connect_timeout,
        http2_only: f.http2_only,
        https_h2: f.https_h2,
        http2_keep_alive_interval,
        http2_keep_alive_timeout,
        pool_max_lifetime,
    };
    ok.then_some(config)
}

fn compile_dns(f: &DnsFile, diag: &mut Diag<'_>) -> Option<DnsConfig> {
    let d = DnsConfig::default();
    let cache_size = match &f.cache_size {
        Some(v) if in_range(v, 0..=10_000_000, "cache_size", diag) => {
            usize::try_from(*v.get_ref()).unwrap_or(usize::MAX)
        }
        Some(_) => return None,
        None => d.cache_size,
    };
    Some(DnsConfig {
        nameservers: f.nameservers.clone(),
        use_hosts_file: f.use_hosts_file.unwrap_or(d.use_hosts_file),
        cache_size,
    })
}

fn compile_backbone(
    f: &BackboneFile,
    role: Role,
    paths: &Paths<'_>,
    diag: &mut Diag<'_>,
) -> Option<BackboneConfig> {
    let mut ok = true;
    if let (Role::Pop, Some(l)) = (role, &f.listen) {
        diag.expect(
            l.span(),
            "a PoP does not listen on the backbone",
            "`listen` only in an origin's file",
        );
        ok = false;
    }
    match (&f.cert, &f.key) {
        (Some(c), None) => diag.expect(c.span(), "`cert` given without `key`", "both or neither"),
        (None, Some(k)) => diag.expect(k.span(), "`key` given without `cert`", "both or neither"),
        _ => {}
    }
    ok &= f.cert.is_some() == f.key.is_some();
    // Where a missing setting is reported: the section's first one given.
    let anchor = [&f.ca, &f.cert, &f.key]
        .into_iter()
        .flatten()
        .map(S::span)
        .chain(f.listen.as_ref().map(S::span))
        .min_by_key(|s| s.start)
        .unwrap_or(0..0);
    if role == Role::Origin && f.listen.is_none() {
        let message = "an origin's `[backbone]` needs `listen`";
        diag.expect(
            anchor.clone(),
            message,
            "listen = \"0.0.0.0:7443\" or similar",
        );
        ok = false;
    }
    // Mutual TLS: each end needs the CA and its own certificate and key.
    if f.ca.is_none() {
        let message = "`[backbone]` needs `ca` (the backbone CA's certificate)";
        diag.expect(anchor.clone(), message, "ca = \"certs/ca.pem\"");
        ok = false;
    }
    if f.cert.is_none() && f.key.is_none() {
        let message = "`[backbone]` needs `cert` and `key` (this node's certificate)";
        diag.expect(
            anchor,
            message,
            "cert = \"certs/NODE.pem\" and key = \"certs/NODE.key\"",
        );
        ok = false;
    }
    let streams = f.max_concurrent_streams.as_ref();
    ok &= streams.is_none_or(|s| in_range(s, 1..=1_000_000, "max_concurrent_streams", diag));
    let ms = |v: &Option<S<u64>>, range, what, diag: &mut Diag<'_>| match v {
        Some(v) if in_range(v, range, what, diag) => Ok(Some(Duration::from_millis(*v.get_ref()))),
        Some(_) => Err(()),
        None => Ok(None),
    };
    let keep_alive = ms(&f.keep_alive_ms, 100..=60_000, "keep_alive_ms", diag);
    let idle_timeout = ms(&f.idle_timeout_ms, 500..=600_000, "idle_timeout_ms", diag);
    let reconnect_min = ms(&f.reconnect_min_ms, 10..=60_000, "reconnect_min_ms", diag);
    let reconnect_max = ms(&f.reconnect_max_ms, 100..=600_000, "reconnect_max_ms", diag);
    let (Ok(keep_alive), Ok(idle_timeout), Ok(reconnect_min), Ok(reconnect_max)) =
        (keep_alive, idle_timeout, reconnect_min, reconnect_max)
    else {
        return None;
    };
    // Against the documented defaults when only one of a pair is given; the
    // error points at the value given (the second of the pair if both are).
    let keep = keep_alive.unwrap_or(Duration::from_millis(1000));
    let idle = idle_timeout.unwrap_or(Duration::from_millis(4000));
    if let Some(span) = f.idle_timeout_ms.as_ref().or(f.keep_alive_ms.as_ref())
        && keep >= idle
    {
        let message = "idle_timeout_ms must be longer than keep_alive_ms";
        let expected = "a few keep-alives (idle_timeout_ms defaults to 4000)";
        diag.expect(span.span(), message, expected);
        ok = false;
    }
    let lo = reconnect_min.unwrap_or(Duration::from_millis(100));
    let hi = reconnect_max.unwrap_or(Duration::from_millis(5000));
    if let Some(span) = f.reconnect_max_ms.as_ref().or(f.reconnect_min_ms.as_ref())
        && lo > hi
    {
        let message = "reconnect_max_ms is below reconnect_min_ms";
        let expected = "at least reconnect_min_ms (reconnect_max_ms defaults to 5000)";
        diag.expect(span.span(), message, expected);
        ok = false;
    }
    let config = BackboneConfig {
        keep_alive,
        idle_timeout,
        reconnect_min,
        reconnect_max,
        listen: f.listen.as_ref().map(|l| *l.get_ref()),
        ca: f.ca.as_ref().map(|p| paths.file(p, diag)),
        cert: f.cert.as_ref().map(|p| paths.file(p, diag)),
        key: f.key.as_ref().map(|p| paths.file(p, diag)),
        max_concurrent_streams: streams
            .map_or(1000, |s| u32::try_from(*s.get_ref()).unwrap_or(u32::MAX)),
        config_deltas: f.config_deltas.as_ref().is_none_or(|d| *d.get_ref()),
    };
    ok.then_some(config)
}

fn compile_origins(files: &[OriginFile], diag: &mut Diag<'_>) -> Vec<OriginLink> {
    let mut seen = HashMap::new();
    let mut out = Vec::new();
    for f in files {
        check_region(&f.region, diag);
        // The origin's node id: its certificate names it. `localhost`,
        // which every node certificate names, would let any node pass.
        if !is_node_id(f.server_name.get_ref()) {
            let message = format!("invalid server_name `{}`", f.server_name.get_ref());
            diag.expect(
                f.server_name.span(),
                message,
                "the origin's node id, as its backbone certificate names it",
            );
        }
        let key = (f.region.get_ref().clone(), *f.address.get_ref());
        if let Some(line) = seen.insert(key, diag.line_of(&f.address.span())) {
            diag.at(
                f.address.span(),
                format!("duplicate origin (first at line {line})"),
            );
        }
        out.push(OriginLink {
            region: f.region.get_ref().clone(),
            address: *f.address.get_ref(),
            server_name: f.server_name.get_ref().clone(),
        });
    }
    out
}

/// API definitions live in the origin's file; `[[origins]]` in a PoP's.
fn check_role(raw: &RawNode, role: Role, diag: &mut Diag<'_>) {
    if role == Role::Pop {
        for span in &raw.defs_spans {
            diag.expect(
                span.clone(),
                "API definitions are not allowed in a PoP's file",
                "them in the origin's file (a PoP receives them over the backbone)",
            );
        }
    }
    if role == Role::Origin && raw.has_origins {
        let message = "`[[origins]]` is only allowed in a PoP's file";
        diag.expect(0..0, message, "no [[origins]] in an origin's file");
    }
}

/// Makes origin-dependent values explicit before the definitions are serialized for
/// PoPs: each API's home region (`home`, else the file's `[node] region`) and
/// resolved certificate paths.
fn prepare_definitions(
    raw: &mut RawNode,
    paths: &Paths<'_>,
    home: Option<&str>,
    diag: &mut Diag<'_>,
) {
    let mut region = raw.node.as_ref().and_then(|n| n.region.clone());
    if let (Some(region), Some(home)) = (&mut region, home) {
        *region.get_mut() = home.to_owned();
    }
    for api in &mut raw.defs.apis {
        if api.region.is_none() {
            api.region = region.clone();
        }
    }
    for domain in &mut raw.defs.domains {
        if let Some(c) = &mut domain.certificate {
            let resolved = paths.cert(c, diag);
            *c.cert.get_mut() = resolved.cert.to_string_lossy().into_owned();
            *c.key.get_mut() = resolved.key.to_string_lossy().into_owned();
        }
    }
}

/// An origin's listeners serve its regional APIs only (edge APIs are entered at
/// PoPs): a default naming an edge API would answer every request 404.
fn check_default_apis(raw: &RawNode, diag: &mut Diag<'_>) {
    let apis = &raw.defs.apis;
    for l in &raw.listeners {
        let Some(name) = &l.default_api else { continue };
        let name_str = name.get_ref().as_str();
        match apis.iter().find(|a| a.name.get_ref() == name_str) {
            Some(api) if *api.endpoint.get_ref() == EndpointMode::Edge => {
                let message = format!(
                    "default_api names edge API `{name_str}`, which an origin's listeners do not serve"
                );
                diag.expect(name.span(), message, "a regional API");
            }
            Some(_) => {}
            None if diag.is_broken(&format!("api:{name_str}")) => {}
            None => {
                let known: Vec<String> = apis
                    .iter()
                    .map(|a| format!("`{}`", a.name.get_ref()))
                    .collect();
                let message = format!("default_api names unknown API `{name_str}`");
                diag.expect(name.span(), message, format!("one of {}", known.join(", ")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::Role;
    use crate::testdata::*;

    #[test]
    fn node_section_rules() {
        assert_eq!(errors(""), ["1:1: missing section `[node]`"]);
        assert_eq!(
            errors("[node]\nid = \"Bad_Id\"\n"),
            [
                "2:6: invalid node id `Bad_Id`",
                "2:6: an origin's `[node]` needs a `region`"
            ]
        );
        assert_eq!(
            errors("[node]\nid = \"ca\"\nregion = \"r\"\n"),
            ["2:6: invalid node id `ca`"]
        );
        let pop = "[node]\nid = \"pop\"\n[[origins]]\nregion = \"us\"\naddress = \"127.0.0.1:1\"\n\
                   server_name = \"o\"\n[[origins]]\nregion = \"US\"\naddress = \"127.0.0.1:1\"\n\
                   server_name = \"o o\"\n[[origins]]\nregion = \"us\"\naddress = \"127.0.0.1:1\"\n\
                   server_name = \"o\"\n";
        assert_eq!(
            errors(pop),
            [
                "1:1: a PoP needs `[backbone]` (its links to the origins)",
                "8:10: invalid region `US`",
                "10:15: invalid server_name `o o`",
                "13:11: duplicate origin (first at line 5)",
            ]
        );
        // Every node certificate names localhost: it would verify any node.
        let local = pop.replace("\"o o\"", "\"localhost\"");
        assert!(
            errors(&local).contains(&"10:15: invalid server_name `localhost`".to_owned()),
            "{:?}",
            errors(&local)
        );
    }

    #[test]
    fn a_quota_store_is_local_or_a_redis_of_an_origin() {
        let node = |q: &str| format!("[node]\nid = \"o\"\nregion = \"us\"\n[quotas]\n{q}");
        let store = |q: &str| parse(&node(q)).unwrap_or_else(|e| panic!("{e}")).quotas;
        let origin = parse("[node]\nid = \"o\"\nregion = \"us\"\n").unwrap();
        assert_eq!(origin.quotas, crate::QuotaStore::Local);
        assert_eq!(store("store = \"local\"\n"), crate::QuotaStore::Local);
        assert_eq!(
            store("store = \"redis://:pw@10.0.0.5:6379/2\"\n"),
            crate::QuotaStore::Redis {
                url: "redis://:pw@10.0.0.5:6379/2".into(),
                key_prefix: "portico:".into(),
                tls: crate::RedisTls::default(),
            }
        );
        assert_eq!(
            store("store = \"redis+unix:///run/redis.sock\"\nkey_prefix = \"eu:\"\n"),
            crate::QuotaStore::Redis {
                url: "redis+unix:///run/redis.sock".into(),
                key_prefix: "eu:".into(),
                tls: crate::RedisTls::default(),
            }
        );
        assert_eq!(
            errors(&node("store = \"memcached://a:1\"\n")),
            ["5:9: invalid quota store `memcached://a:1`: not a Redis URL"]
        );
        for (bad, why) in [
            ("redis://", "Missing hostname"),
            ("redis://h:port", "Redis URL did not parse"),
            ("redis://h:+6379", "Redis URL did not parse"),
            ("redis://h:6379/x", "Invalid database number"),
            ("redis://[::1", "Redis URL did not parse"),
            ("redis://[::1]junk", "Redis URL did not parse"),
            (
                "redis://0.0.0.0",
                "Cannot connect to a wildcard address (0.0.0.0 or ::)",
            ),
            ("redis+unix://run/r.sock", "Missing path"),
            ("unix://x", "Missing path"),
            ("redis://a b", "Redis URL did not parse"),
        ] {
            assert_eq!(
                errors(&node(&format!("store = \"{bad}\"\n"))),
                [format!("5:9: invalid quota store `{bad}`: {why}")]
            );
        }
        // The password stays out of the message.
        assert_eq!(
            errors(&node("store = \"redis://u:secret@h:port\"\n")),
            ["5:9: invalid quota store `redis://…@h:port`: Redis URL did not parse"]
        );
        for good in [
            "redis://h",
            "redis://u:p@h.example:6379/3",
            "redis://:p@10.0.0.5",
            "redis://[::1]:6379",
            "unix:///run/r.sock",
            "redis://h/0?protocol=resp3",
            "rediss://u:p@cache.example:6380/1",
        ] {
            assert!(
                matches!(
                    store(&format!("store = \"{good}\"\n")),
                    crate::QuotaStore::Redis { .. }
                ),
                "{good}"
            );
        }
        assert_eq!(
            errors(&node("key_prefix = \"eu:\"\n")),
            ["5:14: key_prefix is for a Redis store"]
        );
        assert_eq!(
            errors(&node("store = \"rediss://a:6380/#insecure\"\n")),
            ["5:9: a quota store URL takes no fragment (such as `#insecure`)"]
        );
        assert_eq!(
            errors(&node("store = \"redis://a\"\nca = \"ca.pem\"\n")),
            ["6:6: ca, cert and key are for a `rediss://` store"]
        );
        assert_eq!(
            errors(&node("store = \"rediss://a\"\ncert = \"c.pem\"\n")),
            ["6:8: `cert` given without `key`"]
        );
        let missing = errors(&node("store = \"rediss://a\"\nca = \"nope.pem\"\n"));
        assert!(
            missing.len() == 1 && missing[0].starts_with("6:6: file `nope.pem` not found"),
            "{missing:?}"
        );
        // TLS with the CA and a client certificate, relative to the file.
        let tls = "store = \"rediss://cache.example:6380\"\nca = \"ca.pem\"\ncert = \"node.pem\"\nkey = \"node.key\"\n";
        let dir = crate::testdata::fixture_dir();
        assert_eq!(
            store(tls),
            crate::QuotaStore::Redis {
                url: "rediss://cache.example:6380".into(),
                key_prefix: "portico:".into(),
                tls: crate::RedisTls {
                    ca: Some(dir.join("ca.pem")),
                    client: Some(crate::CertPaths {
                        cert: dir.join("node.pem"),
                        key: dir.join("node.key"),
                    }),
                },
            }
        );
        assert_eq!(
            errors(&node("store = \"redis://a\"\nkey_prefix = \"a b\"\n")),
            ["6:14: invalid key_prefix `a b`"]
        );
        assert_eq!(
            errors(&node("stor = \"local\"\n")),
            ["5:1: unknown field `stor`"]
        );
        let pop = "[node]\nid = \"pop\"\n[quotas]\nstore = \"redis://a\"\n\
                   [[origins]]\nregion = \"us\"\naddress = \"127.0.0.1:1\"\nserver_name = \"o\"\n";
        assert_eq!(
            errors(pop),
            [
                "1:1: a PoP needs `[backbone]` (its links to the origins)",
                "4:9: `[quotas]` is an origin's setting",
            ]
        );
    }

    #[test]
    fn cpus_are_distinct_cpu_numbers() {
        let node = |cpus: &str| format!("[node]\nid = \"o\"\nregion = \"us\"\ncpus = {cpus}\n");
        let c = parse(&node("[1, 0]")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.node.cpus, [1, 0]);
        let c = parse("[node]\nid = \"o\"\nregion = \"us\"\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(c.node.cpus.is_empty(), "no `cpus`: every CPU");
        assert_eq!(errors(&node("[]")), ["4:8: `cpus` is empty"]);
        assert_eq!(
            errors(&node("[0, 1024, 0]")),
            [
                "4:12: CPU 1024 is out of range",
                "4:18: CPU 0 is listed twice"
            ]
        );
        assert_eq!(errors(&node("[-1]")), ["4:9: invalid value: integer `-1`"]);
        assert_eq!(
            errors(&node("\"0-1\"")),
            ["4:8: invalid type: string \"0-1\""]
        );
    }

    #[test]
    fn listener_rules() {
        let text = format!(
            "{NODE}[[listeners]]\naddress = \"127.0.0.1:1\"\ndefault_api = \"nope\"\nhttp3 = true\n\
             tls = false\ncertificates = [ {{ cert = \"certs/a.pem\", key = \"missing.key\" }} ]\n\
             [[listeners]]\naddress = \"127.0.0.1:1\"\n"
        );
        let e = errors(&text);
        assert_eq!(e.len(), 5, "{e:?}");
        assert_eq!(e[0], "6:15: default_api names unknown API `nope`");
        assert_eq!(e[1], "7:9: http3 needs TLS");
        assert_eq!(
            e[2],
            "9:27: certificates given for a listener with tls = false"
        );
        assert!(
            e[3].starts_with("9:48: file `missing.key` not found (looked at /"),
            "{}",
            e[3]
        );
        assert_eq!(
            e[4],
            "11:11: duplicate listener address 127.0.0.1:1 (first at line 5)"
        );
    }

    /// An origin's listeners serve regional APIs only: every request falling
    /// to an edge default would be answered 404.
    #[test]
    fn an_origin_listener_default_is_a_regional_api() {
        let listener =
            "[[listeners]]\naddress = \"127.0.0.1:1\"\ntls = false\ndefault_api = \"a\"\n";
        let text = format!("{}{listener}", api(&mock_route("GET", "/m")));
        assert_eq!(
            parse(&text).unwrap_err().to_string(),
            "t.toml:15:15: default_api names edge API `a`, which an origin's listeners do not serve \
             (expected a regional API)"
        );
        let regional = text.replace("endpoint = \"edge\"", "endpoint = \"regional\"");
        assert!(parse(&regional).is_ok());
    }

    #[test]
    fn admin_token_rules() {
        let admin = |rest: &str| format!("{NODE}[admin]\naddress = \"127.0.0.1:9\"\n{rest}");
        let c = parse(&admin("token_file = \"token\"\n")).unwrap_or_else(|e| panic!("{e}"));
        let a = c.admin.unwrap();
        assert_eq!(a.token, "s3cret");
        assert!(a.token_file.unwrap().ends_with("token"));
        assert_eq!(
            errors(&admin("token = \"a\"\ntoken_file = \"token\"\n")),
            ["7:14: give either `token` or `token_file`, not both"]
        );
        assert_eq!(errors(&admin("")), ["5:11: `[admin]` needs a token"]);
        assert_eq!(
            errors(&admin("token = \"a b\"\n")),
            ["6:9: invalid admin token"]
        );
    }

    #[test]
    fn backend_http2_keep_alive() {
        use std::time::Duration;
        let client = |rest: &str| format!("{NODE}[backend_client]\n{rest}");
        // On by default, and under the default route timeout together.
        let c = parse(NODE).unwrap();
        let interval = c.backend_client.http2_keep_alive_interval.unwrap();
        assert!(interval + c.backend_client.http2_keep_alive_timeout < c.limits.default_timeout);
        let c = parse(&client(
            "http2_keep_alive_interval_ms = 5000\nhttp2_keep_alive_timeout_ms = 2000\n",
        ))
        .unwrap();
        assert_eq!(
            c.backend_client.http2_keep_alive_interval,
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            c.backend_client.http2_keep_alive_timeout,
            Duration::from_secs(2)
        );
        let c = parse(&client("http2_keep_alive_interval_ms = 0\n")).unwrap();
        assert_eq!(c.backend_client.http2_keep_alive_interval, None);
        assert_eq!(
            errors(&client(
                "http2_keep_alive_interval_ms = 10\nhttp2_keep_alive_timeout_ms = 0\n"
            )),
            [
                "5:32: http2_keep_alive_interval_ms 10 is out of range",
                "6:31: http2_keep_alive_timeout_ms 0 is out of range",
            ]
        );
    }

    /// The backend client would not start with no root to verify by.
    #[test]
    fn webpki_roots_off_needs_a_ca_file() {
        let client = |rest: &str| format!("{NODE}[backend_client]\n{rest}");
        assert_eq!(
            parse(&client("use_webpki_roots = false\n"))
                .unwrap_err()
                .to_string(),
            "t.toml:5:20: use_webpki_roots = false leaves no CA to verify https backends against \
             (expected a ca_file, or use_webpki_roots = true)"
        );
        let c = parse(&client("use_webpki_roots = false\nca_file = \"ca.pem\"\n")).unwrap();
        assert!(!c.backend_client.use_webpki_roots);
        assert!(c.backend_client.ca_file.is_some());
    }

    #[test]
    fn backend_pool_max_lifetime() {
        use std::time::Duration;
        let client = |rest: &str| format!("{NODE}[backend_client]\n{rest}");
        let c = parse(NODE).unwrap();
        assert_eq!(
            c.backend_client.pool_max_lifetime,
            Some(Duration::from_secs(300))
        );
        let c = parse(&client("pool_max_lifetime_ms = 60000\n")).unwrap();
        assert_eq!(
            c.backend_client.pool_max_lifetime,
            Some(Duration::from_secs(60))
        );
        let c = parse(&client("pool_max_lifetime_ms = 0\n")).unwrap();
        assert_eq!(c.backend_client.pool_max_lifetime, None);
        assert_eq!(
            errors(&client("pool_max_lifetime_ms = 10\n")),
            ["5:24: pool_max_lifetime_ms 10 is out of range"]
        );
    }

    #[test]
    fn limits_and_backbone_ranges() {
        let text = format!(
            "{NODE}[limits]\nmax_body_bytes = 0\nmax_header_bytes = 10\ndefault_timeout_ms = 30000\n\
             [backend_client]\nconnect_timeout_ms = 0\n\
             [backbone]\nlisten = \"127.0.0.1:0\"\nca = \"ca.pem\"\ncert = \"node.pem\"\n\
             max_concurrent_streams = 0\nkeep_alive_ms = 5\nidle_timeout_ms = 1000000\n"
        );
        assert_eq!(
            errors(&text),
            [
                "5:18: max_body_bytes 0 is out of range",
                "6:20: max_header_bytes 10 is out of range",
                "7:22: timeout_ms 30000 is out of range",
                "9:22: connect_timeout_ms 0 is out of range",
                "13:8: `cert` given without `key`",
                "14:26: max_concurrent_streams 0 is out of range",
                "15:17: keep_alive_ms 5 is out of range",
                "16:19: idle_timeout_ms 1000000 is out of range",
            ]
        );
        let text = format!(
            "{NODE}{BACKBONE}keep_alive_ms = 2000\nidle_timeout_ms = 1000\n\
             reconnect_min_ms = 500\nreconnect_max_ms = 100\n"
        );
        assert_eq!(
            errors(&text),
            [
                "10:19: idle_timeout_ms must be longer than keep_alive_ms",
                "12:20: reconnect_max_ms is below reconnect_min_ms",
            ]
        );
        assert_eq!(
            errors(&format!("{NODE}[limits]\nmax_connections = 0\n")),
            ["5:19: max_connections 0 is out of range"]
        );
        let c = parse(&format!("{NODE}[limits]\nmax_connections = 100\n")).unwrap();
        assert_eq!(c.limits.max_connections, 100);
        assert_eq!(c.limits.max_connections_per_client, 256);
        assert_eq!(
            errors(&format!(
                "{NODE}[limits]\nmax_connections_per_client = 1000001\n"
            )),
            ["5:30: max_connections_per_client 1000001 is out of range"]
        );
        // 0: no cap.
        let c = parse(&format!("{NODE}[limits]\nmax_connections_per_client = 0\n")).unwrap();
        assert_eq!(c.limits.max_connections_per_client, 0);
        assert_eq!(
            c.limits.upstream_read_timeout,
            std::time::Duration::from_secs(60)
        );
        assert_eq!(
            errors(&format!("{NODE}[limits]\nupstream_read_timeout_ms = 50\n")),
            ["5:28: upstream_read_timeout_ms 50 is out of range"]
        );
        let c = parse(&format!("{NODE}[limits]\nupstream_read_timeout_ms = 250\n")).unwrap();
        assert_eq!(
            c.limits.upstream_read_timeout,
            std::time::Duration::from_millis(250)
        );
        assert_eq!(c.limits.send_timeout, std::time::Duration::from_secs(60));
        assert_eq!(
            errors(&format!("{NODE}[limits]\nsend_timeout_ms = 99\n")),
            ["5:19: send_timeout_ms 99 is out of range"]
        );
        let c = parse(&format!("{NODE}[limits]\nsend_timeout_ms = 1500\n")).unwrap();
        assert_eq!(
            c.limits.send_timeout,
            std::time::Duration::from_millis(1500)
        );
        assert_eq!(c.limits.upload_timeout, std::time::Duration::from_secs(60));
        assert_eq!(
            errors(&format!("{NODE}[limits]\nupload_timeout_ms = 3600001\n")),
            ["5:21: upload_timeout_ms 3600001 is out of range"]
        );
        let c = parse(&format!("{NODE}[limits]\nupload_timeout_ms = 5000\n")).unwrap();
        assert_eq!(c.limits.upload_timeout, std::time::Duration::from_secs(5));
        assert_eq!(
            errors(&format!(
                "{NODE}[backend_client]\npool_idle_timeout_ms = 100000000\n\
                 [dns]\ncache_size = 20000000\n"
            )),
            [
                "5:24: pool_idle_timeout_ms 100000000 is out of range",
                "7:14: cache_size 20000000 is out of range",
            ]
        );
        // One of each pair, against the other's default (idle 4 s, max 5 s).
        let text = format!("{NODE}{BACKBONE}keep_alive_ms = 10000\nreconnect_min_ms = 8000\n");
        assert_eq!(
            errors(&text),
            [
                "9:17: idle_timeout_ms must be longer than keep_alive_ms",
                "10:20: reconnect_max_ms is below reconnect_min_ms",
            ]
        );
        // A backbone without its TLS files, or an origin's without `listen`,
        // would fail (or do nothing) only when the node starts.
        assert_eq!(
            errors(&format!("{NODE}[backbone]\nkeep_alive_ms = 1000\n")),
            [
                "1:1: an origin's `[backbone]` needs `listen`",
                "1:1: `[backbone]` needs `ca` (the backbone CA's certificate)",
                "1:1: `[backbone]` needs `cert` and `key` (this node's certificate)",
            ]
        );
        assert_eq!(
            errors(&format!("{NODE}[backbone]\nca = \"ca.pem\"\n")),
            [
                "5:6: an origin's `[backbone]` needs `listen`",
                "5:6: `[backbone]` needs `cert` and `key` (this node's certificate)",
            ]
        );
    }

    /// What a reload cannot apply is named, so an operator knows to restart.
    #[test]
    fn sections_a_reload_does_not_apply_are_named() {
        let running = parse(&format!("{NODE}[limits]\nmax_connections = 100\n")).unwrap();
        let same = parse(&format!("{NODE}[limits]\nmax_connections = 100\n")).unwrap();
        assert!(running.restart_only_changes(&same).is_empty());
        let next = parse(&format!(
            "{NODE}[limits]\nmax_connections = 200\n[cache]\nenabled = false\n"
        ))
        .unwrap();
        assert_eq!(running.restart_only_changes(&next), ["[limits]", "[cache]"]);
        // Route timeouts follow default_timeout_ms at once.
        let timeout = parse(&format!(
            "{NODE}[limits]\nmax_connections = 100\ndefault_timeout_ms = 5000\n"
        ))
        .unwrap();
        assert!(running.restart_only_changes(&timeout).is_empty());
        // The quota book is opened at start.
        let redis = parse(&format!(
            "{NODE}[limits]\nmax_connections = 100\n[quotas]\nstore = \"redis://127.0.0.1:6379/0\"\n"
        ))
        .unwrap();
        assert_eq!(running.restart_only_changes(&redis), ["[quotas]"]);
    }

    #[test]
    fn config_deltas_default_on_and_can_be_turned_off() {
        let backbone = |text: &str| parse(text).unwrap().backbone.unwrap();
        let on = backbone(&format!("{NODE}{BACKBONE}keep_alive_ms = 1000\n"));
        assert!(on.config_deltas);
        let off = backbone(&format!("{NODE}{BACKBONE}config_deltas = false\n"));
        assert!(!off.config_deltas);
        assert_eq!(
            errors(&format!("{NODE}{BACKBONE}config_deltas = \"no\"\n")),
            ["9:17: invalid type: string \"no\""]
        );
    }

    #[test]
    fn role_rules() {
        let pop = "[node]\nid = \"pop\"\n[backbone]\nlisten = \"127.0.0.1:7\"\nca = \"ca.pem\"\n\
                   cert = \"node.pem\"\nkey = \"node.key\"\n";
        assert_eq!(
            parse_role(pop, Role::Pop).unwrap_err().to_string(),
            "t.toml:4:10: a PoP does not listen on the backbone (expected `listen` only in an origin's file)"
        );
        let origin = format!(
            "{NODE}[[origins]]\nregion = \"r\"\naddress = \"127.0.0.1:7\"\nserver_name = \"o\"\n"
        );
        let e = parse_role(&origin, Role::Origin).unwrap_err();
        assert_eq!(
            e.0[0].message,
            "`[[origins]]` is only allowed in a PoP's file"
        );
    }

    #[test]
    fn the_proxy_protocol_and_the_balancers_that_may_send_it() {
        let listener =
            |extra: &str| format!("{NODE}[[listeners]]\naddress = \"127.0.0.1:0\"\n{extra}");
        let config = parse(&listener(
            "proxy_protocol = true\nproxy_protocol_from = [\"10.1.2.3/8\", \"fd00::1\"]\n",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let from: Vec<String> = config.listeners[0]
            .proxy_protocol
            .iter()
            .flatten()
            .map(ToString::to_string)
            .collect();
        assert_eq!(from, ["10.0.0.0/8", "fd00::1/128"]);
        let any = parse(&listener("proxy_protocol = true\n")).unwrap();
        assert_eq!(any.listeners[0].proxy_protocol, Some(Vec::new()));
        let off = parse(&listener("")).unwrap();
        assert_eq!(off.listeners[0].proxy_protocol, None);
        assert_eq!(
            errors(&listener(
                "proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/33\", \"lb\"]\n"
            )),
            [
                "7:24: invalid proxy_protocol_from entry `10.0.0.0/33`",
                "7:39: invalid proxy_protocol_from entry `lb`",
            ]
        );
        assert_eq!(
            errors(&listener("proxy_protocol_from = [\"10.0.0.0/8\"]\n")),
            ["6:24: proxy_protocol_from given for a listener without the PROXY protocol"]
        );
    }

    #[test]
    fn several_listeners_may_ask_for_any_port() {
        let text = format!(
            "{NODE}[[listeners]]\naddress = \"127.0.0.1:0\"\n[[listeners]]\naddress = \"127.0.0.1:0\"\n"
        );
        let config = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.listeners.len(), 2);
    }
}
