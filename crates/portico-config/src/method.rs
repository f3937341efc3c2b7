//! Small enums that appear in logs and headers: each has `as_str()`.

use std::fmt;
use std::str::FromStr;

/// A route's method. `Any` matches every method not claimed by a more specific route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    Any,
}

impl Method {
    /// Every concrete method, in the order `Allow` lists them.
    pub const CONCRETE: [Method; 7] = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Patch,
        Method::Delete,
        Method::Options,
    ];

    /// The accepted spellings, for error messages.
    pub const EXPECTED: &'static str = "one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, ANY";

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Any => "ANY",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string was not one of [`Method::EXPECTED`] (methods are upper case, as in HTTP).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown method `{0}`")]
pub struct UnknownMethod(pub String);

impl FromStr for Method {
    type Err = UnknownMethod;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "ANY" => Method::Any,
            other => return Err(UnknownMethod(other.to_owned())),
        })
    }
}

/// Where clients enter an API: `Edge` APIs at PoPs, `Regional` APIs at the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    Edge,
    Regional,
}

impl EndpointMode {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointMode::Edge => "edge",
            EndpointMode::Regional => "regional",
        }
    }
}

impl fmt::Display for EndpointMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a node file describes. A file with `[[origins]]` is a PoP's; any other is an
/// origin's (see [`crate::parse_node_as`] to state it explicitly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Origin,
    Pop,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Origin => "origin",
            Role::Pop => "pop",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_round_trips_through_str() {
        for m in Method::CONCRETE.into_iter().chain([Method::Any]) {
            assert_eq!(m.as_str().parse::<Method>(), Ok(m));
        }
        assert_eq!(
            "get".parse::<Method>(),
            Err(UnknownMethod("get".to_owned()))
        );
    }
}
