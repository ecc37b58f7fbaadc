//! `keel serve --config keel.toml`: the engine's options at the top level
//! (`keel::Options`, which refuses unknown keys), and the server's own in a
//! `[server]` table, which the engine never sees:
//!
//! ```toml
//! sync = "always"
//!
//! [server]
//! auth_token_file = "token"   # or auth_token = "...": not both
//! tls_cert = "cert.pem"
//! tls_key = "key.pem"
//! ```
//!
//! Relative paths are taken from the directory of the config file, so the
//! file means the same wherever the server is started. Flags (and
//! `KEEL_AUTH_TOKEN`) override what the file says.

use keel::Options;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The `[server]` table.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// A file holding the auth token.
    pub auth_token_file: Option<PathBuf>,
    /// The auth token itself (keep the file private).
    pub auth_token: Option<String>,
    /// TLS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
}

/// A config file read whole.
#[derive(Debug)]
pub struct ConfigFile {
    /// The engine's options.
    pub options: Options,
    /// The server's settings, paths made absolute.
    pub server: ServerSection,
}

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not readable.
    #[error("cannot read the config file {path}: {why}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: std::io::Error,
    },
    /// Not TOML, or a bad `[server]` table.
    #[error("the config file {path}: {why}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The engine's options are refused (the message names the option).
    #[error("the config file {path}: {why}")]
    Options {
        /// The file.
        path: PathBuf,
        /// The engine's refusal.
        why: keel::Error,
    },
}

impl ConfigFile {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|why| ConfigError::Read {
            path: path.to_path_buf(),
            why,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        ConfigFile::parse(&text, base).map_err(|e| match e {
            ParseError::Syntax(why) => ConfigError::Syntax {
                path: path.to_path_buf(),
                why,
            },
            ParseError::Options(why) => ConfigError::Options {
                path: path.to_path_buf(),
                why,
            },
        })
    }

    fn parse(text: &str, base: &Path) -> Result<ConfigFile, ParseError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ParseError::Syntax(e.to_string()))?;
        let mut server: ServerSection = match table.remove("server") {
            None => ServerSection::default(),
            Some(v) => v
                .try_into()
                .map_err(|e: toml::de::Error| ParseError::Syntax(format!("[server]: {e}")))?,
        };
        if server.auth_token.is_some() && server.auth_token_file.is_some() {
            return Err(ParseError::Syntax(
                "[server]: give auth_token or auth_token_file, not both".into(),
            ));
        }
        for p in [
            &mut server.auth_token_file,
            &mut server.tls_cert,
            &mut server.tls_key,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        let rest = toml::to_string(&table).map_err(|e| ParseError::Syntax(e.to_string()))?;
        let options = Options::from_toml(&rest).map_err(ParseError::Options)?;
        Ok(ConfigFile { options, server })
    }
}

enum ParseError {
    Syntax(String),
    Options(keel::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, String> {
        ConfigFile::parse(text, Path::new("/etc/keel")).map_err(|e| match e {
            ParseError::Syntax(s) => s,
            ParseError::Options(e) => e.to_string(),
        })
    }

    #[test]
    fn the_server_table_is_taken_out_and_its_paths_made_absolute() {
        let c = parse(
            "segment_size = 8388608\n[server]\nauth_token_file = \"token\"\ntls_cert = \"/pki/c.pem\"\ntls_key = \"k.pem\"\n",
        )
        .unwrap();
        assert_eq!(c.options.segment_size, 8 << 20);
        assert_eq!(
            c.server,
            ServerSection {
                auth_token_file: Some("/etc/keel/token".into()),
                auth_token: None,
                tls_cert: Some("/pki/c.pem".into()),
                tls_key: Some("/etc/keel/k.pem".into()),
            }
        );
        let plain = parse("sync = \"never\"\n").unwrap();
        assert_eq!(plain.server, ServerSection::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_by_name() {
        let e = parse("[server]\nauth_tokn = \"x\"\n").unwrap_err();
        assert!(e.contains("auth_tokn"), "{e}");
        let e = parse("segmnt_size = 1\n").unwrap_err();
        assert!(e.contains("segmnt_size"), "{e}");
        let e = parse("segment_size = 1099511627776\n").unwrap_err();
        assert!(e.contains("segment_size"), "{e}");
        let e = parse("[server]\nauth_token = \"a\"\nauth_token_file = \"b\"\n").unwrap_err();
        assert!(e.contains("not both"), "{e}");
        assert!(parse("segment_size = ").is_err());
    }
}
