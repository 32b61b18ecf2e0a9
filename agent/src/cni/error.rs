//! CNI errors: `{"cniVersion", "code", "msg", "details"}` on stdout and a
//! non-zero exit, with the spec's well-known codes.

use serde::Serialize;

/// The spec's error codes mesh-cni uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    /// 1: the configuration's version is not one the plugin speaks.
    IncompatibleVersion,
    /// 3: the container (its namespace, its sandbox) does not exist.
    UnknownContainer,
    /// 4: a required environment variable is missing or wrong.
    InvalidEnv,
    /// 5: reading or writing failed.
    Io,
    /// 6: the configuration could not be decoded.
    Decode,
    /// 7: the configuration is invalid (an unknown mesh network included).
    InvalidConfig,
    /// 11: the agent is unreachable: the runtime may retry.
    TryAgainLater,
    /// 100: the agent refused (the message says why).
    Refused,
}

impl Code {
    fn number(self) -> u32 {
        match self {
            Self::IncompatibleVersion => 1,
            Self::UnknownContainer => 3,
            Self::InvalidEnv => 4,
            Self::Io => 5,
            Self::Decode => 6,
            Self::InvalidConfig => 7,
            Self::TryAgainLater => 11,
            Self::Refused => 100,
        }
    }
}

/// A failed command.
#[derive(Debug)]
pub(crate) struct CniError {
    pub(crate) code: Code,
    pub(crate) msg: String,
    pub(crate) details: String,
}

impl CniError {
    /// An error with a short message and details.
    pub(crate) fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self { code, msg: msg.into(), details: details.into() }
    }

    /// The JSON the runtime reads, for configuration version `version`.
    pub(crate) fn to_json(&self, version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        let wire = Wire { cni_version: version, code: self.code.number(), msg: &self.msg, details: &self.details };
        serde_json::to_string(&wire).unwrap_or_default()
    }
}
