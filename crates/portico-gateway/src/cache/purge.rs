//! Turning what an operator names (a public URL, an API stage, a path) into a
//! [`PurgeScope`], checked against the current definitions. Errors are sentences
//! for the admin API's `400 {"message": ...}`.

use http::Uri;

use super::PurgeScope;
use crate::router::{RoutingTable, ServedModes};

/// Edge and regional APIs alike: a purge is not a client request.
const ALL_MODES: ServedModes = ServedModes {
    edge: true,
    regional: true,
};

/// Longest accepted tag (as read from responses).
pub const MAX_TAG_LEN: usize = 256;
/// Most tags in one purge.
pub const MAX_TAGS: usize = 64;

/// The scope of a public URL (`https://HOST/STAGE/PATH?QUERY`, or a custom domain),
/// addressed as a client would.
pub fn url_scope(table: &RoutingTable, url: &str) -> Result<PurgeScope, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("invalid url `{url}`: {e}"))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let Some(host) = uri.host().filter(|_| scheme_ok) else {
        return Err("url must be an absolute http:// or https:// URL".to_owned());
    };
    let path = check_path(uri.path())?;
    let resolved = table
        .resolve(host, "GET", &path, None, ALL_MODES)
        .map_err(|_| format!("url `{url}` matches no API, stage and GET route"))?;
    scope_of(
        &resolved.api.name,
        &resolved.stage,
        resolved.route_index,
        &resolved.inner_path,
        uri.query(),
    )
}

/// The scope of `path_and_query` inside a stage (`/items/1?q=2`).
pub fn path_scope(
    table: &RoutingTable,
    api: &str,
    stage: &str,
    path_and_query: &str,
) -> Result<PurgeScope, String> {
    check_stage(table, api, stage)?;
    if !path_and_query.starts_with('/') {
        return Err("path must start with `/`".to_owned());
    }
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let path = check_path(path)?;
    if query.is_some_and(|q| !is_uri_text(q)) {
        return Err(format!("invalid query in `{path_and_query}`"));
    }
    let resolved = table
        .resolve_in(api, stage, "GET", &path, ALL_MODES)
        .map_err(|_| format!("path `{path}` matches no GET route of `{api}` stage `{stage}`"))?;
    scope_of(
        api,
        &resolved.stage,
        resolved.route_index,
        &resolved.inner_path,
        query,
    )
}

fn scope_of(
    api: &str,
    stage: &portico_config::Stage,
    route: usize,
    path: &str,
    query: Option<&str>,
) -> Result<PurgeScope, String> {
    let Some(settings) = stage.route_settings(route).cache.as_ref() else {
        let key = stage
            .deployment
            .routes
            .get(route)
            .map_or("?", |r| r.key.as_str());
        return Err(format!(
            "route `{key}` of stage `{}` does not cache responses",
            stage.name
        ));
    };
    Ok(PurgeScope::url(api, &stage.name, path, query, settings))
}

/// The API exists and has the stage.
pub fn check_stage(table: &RoutingTable, api: &str, stage: &str) -> Result<(), String> {
    let a = check_api(table, api)?;
    match a.stage(stage) {
        Some(_) => Ok(()),
        None => Err(format!("API `{api}` has no stage `{stage}`")),
    }
}

pub fn check_api<'t>(
    table: &'t RoutingTable,
    api: &str,
) -> Result<&'t portico_config::Api, String> {
    table
        .api(api)
        .map(|a| &**a)
        .ok_or_else(|| format!("unknown API `{api}`"))
}

/// A prefix scope: the stage exists and the prefix is a path.
pub fn prefix_scope(
    table: &RoutingTable,
    api: &str,
    stage: &str,
    prefix: &str,
) -> Result<PurgeScope, String> {
    check_stage(table, api, stage)?;
    Ok(PurgeScope::Prefix {
        api: api.to_owned(),
        stage: stage.to_owned(),
        path_prefix: check_prefix(prefix)?.into_owned(),
    })
}

/// A path prefix as requests are keyed (see [`check_path`]), without a query.
pub fn check_prefix(prefix: &str) -> Result<std::borrow::Cow<'_, str>, String> {
    if !prefix.starts_with('/') {
        return Err("prefix must start with `/`".to_owned());
    }
    if prefix.contains('?') {
        return Err("a prefix is of the path: no `?`".to_owned());
    }
    check_path(prefix)
}

/// `path` as requests are keyed (percent-encoded as received, dot segments
/// resolved), or why no request could have it: a purge of a path no key
/// can hold would answer 200 and remove nothing.
pub fn check_path(path: &str) -> Result<std::borrow::Cow<'_, str>, String> {
    if !is_uri_text(path) {
        return Err(format!(
            "invalid path `{path}`: percent-encode what is not URI text, as clients send it"
        ));
    }
    crate::gateway::routed_path(path)
        .map_err(|_| format!("invalid path `{path}`: a malformed %-escape, or `..` above the root"))
}

/// Characters a request target may hold as they are (RFC 3986), `#` aside.
fn is_uri_text(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~:/?[]@!$&'()*+,;=%".contains(&b))
}

/// A tag scope: 1 to [`MAX_TAGS`] tags of visible ASCII without commas.
pub fn tag_scope(table: &RoutingTable, api: &str, tags: &[String]) -> Result<PurgeScope, String> {
    check_api(table, api)?;
    check_tags(tags)?;
    Ok(PurgeScope::Tag {
        api: api.to_owned(),
        tags: tags.to_vec(),
    })
}

/// 1 to [`MAX_TAGS`] tags of 1 to [`MAX_TAG_LEN`] visible ASCII characters
/// without commas: a purge checks each against the tags of every entry of its API.
pub fn check_tags(tags: &[String]) -> Result<(), String> {
    if tags.is_empty() || tags.len() > MAX_TAGS {
        return Err(format!("tags must list 1 to {MAX_TAGS} tags"));
    }
    let bad = |t: &String| {
        t.is_empty()
            || t.len() > MAX_TAG_LEN
            || !t.bytes().all(|b| b.is_ascii_graphic() && b != b',')
    };
    if let Some(t) = tags.iter().find(|t| bad(t)) {
        // A tag too long to accept is too long to repeat whole.
        let shown: String = t.chars().take(MAX_TAG_LEN).collect();
        let more = if shown.len() < t.len() { "…" } else { "" };
        return Err(format!(
            "invalid tag `{}{more}` (1 to {MAX_TAG_LEN} visible ASCII characters, no commas)",
            shown.escape_debug()
        ));
    }
    Ok(())
}

/// A whole stage.
pub fn stage_scope(table: &RoutingTable, api: &str, stage: &str) -> Result<PurgeScope, String> {
    check_stage(table, api, stage)?;
    Ok(PurgeScope::Stage {
        api: api.to_owned(),
        stage: stage.to_owned(),
    })
}
