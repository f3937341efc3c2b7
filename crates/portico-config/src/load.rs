//! Reads TOML text into the file structs, one section and one array element at a time,
//! so that errors in different elements are all reported (serde alone stops at the
//! first).

use std::borrow::Cow;
use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::error::Diag;
use crate::file::{
    AdminFile, ApiFile, BackboneFile, BackendClientFile, DefinitionsFile, DeploymentFile, DnsFile,
    DomainFile, IntegrationFile, LimitsFile, ListenerFile, NodeCacheFile, NodeFile,
    NodeThrottleFile, OriginFile, QuotasFile, RouteFile, StageFile,
};

pub(crate) type Value<'t> = Spanned<DeValue<'t>>;

const NODE_SECTIONS: &str = "one of `node`, `listeners`, `admin`, `limits`, `backend_client`, \
                             `dns`, `backbone`, `cache`, `throttle`, `quotas`, `origins`, `apis`, \
                             `domains`, \
                             `usage_plans`, `api_keys`";

/// Everything in a node file, as written.
#[derive(Debug, Default)]
pub(crate) struct RawNode {
    pub node: Option<NodeFile>,
    /// Whether `[node]` was present (even if it failed to load).
    pub has_node: bool,
    pub listeners: Vec<ListenerFile>,
    pub admin: Option<AdminFile>,
    pub limits: LimitsFile,
    pub backend_client: BackendClientFile,
    pub dns: DnsFile,
    pub backbone: Option<BackboneFile>,
    pub cache: NodeCacheFile,
    pub throttle: NodeThrottleFile,
    pub quotas: Option<QuotasFile>,
    pub origins: Vec<OriginFile>,
    pub has_origins: bool,
    pub defs: DefinitionsFile,
    /// Spans of the `apis` / `domains` keys, for "not allowed in a PoP's file".
    pub defs_spans: Vec<Range<usize>>,
}

/// Parses the TOML syntax, reporting every syntax error the parser recovers from.
pub(crate) fn parse_document<'t>(text: &'t str, diag: &mut Diag<'_>) -> Option<DeTable<'t>> {
    let (root, errors) = DeTable::parse_recoverable(text);
    if errors.is_empty() {
        return Some(root.into_inner());
    }
    for e in &errors {
        diag.toml(e);
    }
    None
}

pub(crate) fn read_node(text: &str, diag: &mut Diag<'_>) -> Option<RawNode> {
    let root = parse_document(text, diag)?;
    let mut raw = RawNode::default();
    for (key, value) in root {
        node_section(&mut raw, key, value, diag);
    }
    Some(raw)
}

fn node_section(raw: &mut RawNode, key: Spanned<Cow<'_, str>>, value: Value<'_>, d: &mut Diag) {
    match key.get_ref().as_ref() {
        "node" => {
            raw.has_node = true;
            raw.node = de(value, d);
        }
        "listeners" => raw.listeners = each(value, "listeners", d, de),
        "admin" => raw.admin = de(value, d),
        "limits" => raw.limits = de(value, d).unwrap_or_default(),
        "backend_client" => raw.backend_client = de(value, d).unwrap_or_default(),
        "dns" => raw.dns = de(value, d).unwrap_or_default(),
        "backbone" => raw.backbone = de(value, d),
        "cache" => raw.cache = de(value, d).unwrap_or_default(),
        "throttle" => raw.throttle = de(value, d).unwrap_or_default(),
        "quotas" => raw.quotas = Some(de(value, d).unwrap_or_default()),
        "origins" => {
            raw.has_origins = true;
            raw.origins = each(value, "origins", d, de);
        }
        "apis" | "domains" | "usage_plans" | "api_keys" => {
            raw.defs_spans.push(key.span());
            definitions_section(&mut raw.defs, key, value, d);
        }
        other => d.expect(
            key.span(),
            format!("unknown section `{other}`"),
            NODE_SECTIONS,
        ),
    }
}

/// Reads text holding only `[[apis]]` and `[[domains]]` (a `Definitions::source`).
pub(crate) fn read_definitions(text: &str, diag: &mut Diag<'_>) -> Option<DefinitionsFile> {
    let root = parse_document(text, diag)?;
    let mut defs = DefinitionsFile::default();
    for (key, value) in root {
        definitions_section(&mut defs, key, value, diag);
    }
    Some(defs)
}

fn definitions_section(
    defs: &mut DefinitionsFile,
    key: Spanned<Cow<'_, str>>,
    value: Value<'_>,
    d: &mut Diag,
) {
    match key.get_ref().as_ref() {
        "apis" => defs.apis = each(value, "apis", d, read_api),
        "domains" => defs.domains = each(value, "domains", d, read_domain),
        "usage_plans" => defs.usage_plans = each(value, "usage_plans", d, de),
        "api_keys" => defs.api_keys = each(value, "api_keys", d, de),
        other => d.expect(
            key.span(),
            format!("unknown section `{other}`"),
            "`apis`, `domains`, `usage_plans` or `api_keys`",
        ),
    }
}

/// Deserializes one value on its own; its errors go to `diag`.
pub(crate) fn de<T: DeserializeOwned>(value: Value<'_>, diag: &mut Diag<'_>) -> Option<T> {
    T::deserialize(ValueDeserializer::from(value))
        .map_err(|e| diag.toml(&e))
        .ok()
}

/// Reads each element of an array of tables with `read`, keeping the good ones.
pub(crate) fn each<'t, T>(
    value: Value<'t>,
    name: &str,
    diag: &mut Diag<'_>,
    mut read: impl FnMut(Value<'t>, &mut Diag<'_>) -> Option<T>,
) -> Vec<T> {
    let span = value.span();
    match value.into_inner() {
        DeValue::Array(items) => items.into_iter().filter_map(|v| read(v, diag)).collect(),
        _ => {
            diag.expect(
                span,
                format!("`{name}` must be an array of tables"),
                format!("[[{name}]] sections"),
            );
            Vec::new()
        }
    }
}

fn as_table<'t>(
    value: Value<'t>,
    name: &str,
    diag: &mut Diag<'_>,
) -> Option<(Range<usize>, DeTable<'t>)> {
    let span = value.span();
    match value.into_inner() {
        DeValue::Table(t) => Some((span, t)),
        _ => {
            diag.expect(span, format!("invalid type for `{name}`"), "a table");
            None
        }
    }
}

fn table_value(span: Range<usize>, table: DeTable<'_>) -> Value<'_> {
    Spanned::new(span, DeValue::Table(table))
}

/// A string field of a table that may fail to deserialize as a whole.
fn peek_str(table: &DeTable<'_>, key: &str) -> Option<String> {
    match table.get(key).map(Spanned::get_ref) {
        Some(DeValue::String(s)) => Some(s.to_string()),
        _ => None,
    }
}

fn read_api(value: Value<'_>, diag: &mut Diag<'_>) -> Option<ApiFile> {
    let (span, mut table) = as_table(value, "apis", diag)?;
    let routes = table.remove("routes");
    let deployments = table.remove("deployments");
    let stages = table.remove("stages");
    let name = peek_str(&table, "name");
    let head: Option<ApiFile> = de(table_value(span, table), diag);
    let routes = routes.map(|v| each(v, "apis.routes", diag, read_route));
    let deployments = deployments.map(|v| each(v, "apis.deployments", diag, read_deployment));
    let stages = stages.map(|v| each(v, "apis.stages", diag, read_stage));
    let Some(mut api) = head else {
        if let Some(name) = name {
            diag.mark_broken(format!("api:{name}"));
        }
        return None;
    };
    api.routes = routes.unwrap_or_default();
    api.deployments = deployments.unwrap_or_default();
    api.stages = stages.unwrap_or_default();
    Some(api)
}

fn read_deployment(value: Value<'_>, diag: &mut Diag<'_>) -> Option<DeploymentFile> {
    let (span, mut table) = as_table(value, "deployments", diag)?;
    let routes = table.remove("routes");
    let id = peek_str(&table, "id");
    let head: Option<DeploymentFile> = de(table_value(span, table), diag);
    let routes = routes.map(|v| each(v, "apis.deployments.routes", diag, read_route));
    let Some(mut deployment) = head else {
        if let Some(id) = id {
            diag.mark_broken(format!("deployment:{id}"));
        }
        return None;
    };
    deployment.routes = routes.unwrap_or_default();
    Some(deployment)
}

fn read_stage(value: Value<'_>, diag: &mut Diag<'_>) -> Option<StageFile> {
    let name = match value.get_ref() {
        DeValue::Table(t) => peek_str(t, "name"),
        _ => None,
    };
    let stage = de(value, diag);
    if let (None, Some(name)) = (&stage, name) {
        diag.mark_broken(format!("stage:{name}"));
    }
    stage
}

fn read_domain(value: Value<'_>, diag: &mut Diag<'_>) -> Option<DomainFile> {
    de(value, diag)
}

fn read_route(value: Value<'_>, diag: &mut Diag<'_>) -> Option<RouteFile> {
    let (span, mut table) = as_table(value, "routes", diag)?;
    let integration = table.remove("integration");
    let key = format!(
        "route:{} {}",
        peek_str(&table, "method").as_deref().unwrap_or("ANY"),
        peek_str(&table, "path").unwrap_or_default()
    );
    let route: Option<RouteFile> = de(table_value(span.clone(), table), diag);
    let integration = match integration {
        Some(v) => read_integration(v, diag),
        None => {
            diag.expect(
                span,
                "missing field `integration`",
                "[apis.routes.integration]",
            );
            None
        }
    };
    match (route, integration) {
        (Some(mut route), Some(integration)) => {
            route.integration = Some(integration);
            Some(route)
        }
        _ => {
            diag.mark_broken(key);
            None
        }
    }
}

fn read_integration(value: Value<'_>, diag: &mut Diag<'_>) -> Option<IntegrationFile> {
    const TYPES: &str = "one of `http_proxy`, `http`, `mock`";
    let (span, mut table) = as_table(value, "integration", diag)?;
    let Some(kind) = table.remove("type") else {
        diag.expect(span, "missing field `type`", TYPES);
        return None;
    };
    let rest = table_value(span, table);
    match kind.get_ref() {
        DeValue::String(s) => match s.as_ref() {
            "http_proxy" => de(rest, diag).map(IntegrationFile::HttpProxy),
            "http" => de(rest, diag).map(IntegrationFile::Http),
            "mock" => de(rest, diag).map(IntegrationFile::Mock),
            other => {
                let message = format!("unknown integration type `{other}`");
                diag.expect(kind.span(), message, TYPES);
                None
            }
        },
        _ => {
            diag.expect(kind.span(), "invalid type for `type`", TYPES);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testdata::*;

    #[test]
    fn syntax_errors_are_located() {
        assert_eq!(errors("[node\nid = 1\n"), ["1:6: unclosed table"]);
        let e = errors("[node]\nid = \"o\nregion = \"r\"\n");
        assert_eq!(e, ["2:8: invalid basic string"]);
    }

    #[test]
    fn unknown_sections_and_fields_are_rejected_with_location() {
        let text = format!("{NODE}[caches]\nsize = 1\n[limits]\nmax_bodybytes = 1\n");
        assert_eq!(
            errors(&text),
            [
                "4:2: unknown section `caches`",
                "7:1: unknown field `max_bodybytes`"
            ]
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.0[1].expected.as_deref(),
            Some(
                "one of `max_body_bytes`, `max_header_bytes`, `default_timeout_ms`, `max_connections`, `max_connections_per_client`, `upstream_read_timeout_ms`, `send_timeout_ms`, `upload_timeout_ms`"
            )
        );
    }

    #[test]
    fn errors_in_several_apis_are_all_reported() {
        let text = format!(
            "{NODE}[[apis]]\nname = \"a\"\nendpoint = \"edge\"\nbogus = 1\n\
             [[apis]]\nname = \"b\"\nendpoint = \"edge\"\n\
             [[apis]]\nname = \"c\"\nendpoint = \"middle\"\n"
        );
        assert_eq!(
            errors(&text),
            [
                "7:1: unknown field `bogus`",
                "13:12: unknown variant `middle`"
            ]
        );
    }

    #[test]
    fn errors_in_several_routes_are_all_reported() {
        let text = api(
            "[[apis.routes]]\npath = \"/y\"\nfoo = 1\n[apis.routes.integration]\ntype = \"mocky\"\n\
             [[apis.routes]]\npath = \"/z\"\n\
             [[apis.routes]]\npath = \"/w\"\n[apis.routes.integration]\nuri = \"http://h/\"\n\
             [[apis.routes]]\npath = \"/v\"\n[apis.routes.integration]\ntype = \"mock\"\nstatus = \"ok\"\n",
        );
        assert_eq!(
            errors(&text),
            [
                "9:1: unknown field `foo`",
                "11:8: unknown integration type `mocky`",
                "12:1: missing field `integration`",
                "16:1: missing field `type`",
                "22:10: invalid type: string \"ok\"",
            ]
        );
    }

    #[test]
    fn sections_of_the_wrong_shape() {
        let text = format!("{NODE}[listeners]\naddress = \"127.0.0.1:1\"\n");
        assert_eq!(
            errors(&text),
            ["4:1: `listeners` must be an array of tables"]
        );
        let text = format!("apis = 3\n{NODE}");
        assert_eq!(errors(&text), ["1:8: `apis` must be an array of tables"]);
    }

    #[test]
    fn broken_elements_are_not_reported_again_as_unknown() {
        let text = format!(
            "{NODE}[[apis]]\nname = \"a\"\nendpoint = \"edgy\"\n\
             [[domains]]\nname = \"d.example.com\"\n\
             [[domains.mappings]]\napi = \"a\"\nstage = \"prod\"\n"
        );
        assert_eq!(errors(&text), ["6:12: unknown variant `edgy`"]);
    }
}
