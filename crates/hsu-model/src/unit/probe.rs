//! Health probes: startup, liveness and readiness checks (exec, HTTP, TCP, gRPC health) with
//! their timing and thresholds, parsed from the flat YAML form.

use super::*;

/// A health check, as Kubernetes' probes: one of `exec`, `http`, `tcp`, `grpc`, run every
/// `period` (each attempt bounded by `timeout`) after `initial_delay`; `failure_threshold`
/// failures in a row make it fail, `success_threshold` successes in a row make it pass.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "RawProbe", into = "RawProbe")]
pub struct Probe {
    pub check: Check,
    pub period: Dur,
    pub timeout: Dur,
    pub initial_delay: Dur,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// Runs a command; exit code 0 passes.
    Exec { command: Command },
    /// GET `path` on 127.0.0.1:`port`; a status of 200-399 passes.
    Http { port: PortRef, path: String },
    /// Connects to 127.0.0.1:`port`.
    Tcp { port: PortRef },
    /// `grpc.health.v1.Health/Check` for `service` ("" = the whole server); SERVING passes.
    Grpc { port: PortRef, service: String },
}

fn default_path() -> String {
    "/".into()
}

/// A port by number or by the name of one of the unit's `ports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Named(UnitName),
}

impl<'de> Deserialize<'de> for PortRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = PortRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number (1-65535) or the name of one of the unit's ports")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortRef, E> {
                match u16::try_from(v) {
                    Ok(p) if p > 0 => Ok(PortRef::Number(p)),
                    _ => Err(E::custom(format!("expected a port number from 1 to 65535, found {v}"))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRef, E> {
                Err(E::custom(format!("expected a port number from 1 to 65535, found {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRef, E> {
                UnitName::new(v)
                    .map(PortRef::Named)
                    .map_err(|_| E::custom(format!("port {v:?} is neither a number nor a port name")))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    exec: Option<ExecCheck>,
    http: Option<HttpCheck>,
    tcp: Option<TcpCheck>,
    grpc: Option<GrpcCheck>,
    period: Option<Dur>,
    timeout: Option<Dur>,
    initial_delay: Option<Dur>,
    failure_threshold: Option<u32>,
    success_threshold: Option<u32>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ExecCheck {
    command: Command,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct HttpCheck {
    port: PortRef,
    #[serde(default = "default_path")]
    path: String,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct TcpCheck {
    port: PortRef,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct GrpcCheck {
    port: PortRef,
    #[serde(default)]
    service: String,
}

impl TryFrom<RawProbe> for Probe {
    type Error = String;
    fn try_from(r: RawProbe) -> Result<Self, String> {
        let mut checks = Vec::new();
        if let Some(c) = r.exec {
            checks.push(Check::Exec { command: c.command });
        }
        if let Some(c) = r.http {
            if !c.path.starts_with('/') {
                return Err(format!("http probe path must start with '/', found {:?}", c.path));
            }
            checks.push(Check::Http { port: c.port, path: c.path });
        }
        if let Some(c) = r.tcp {
            checks.push(Check::Tcp { port: c.port });
        }
        if let Some(c) = r.grpc {
            checks.push(Check::Grpc { port: c.port, service: c.service });
        }
        let check = match checks.len() {
            1 => checks.pop().expect("one"),
            0 => return Err("a probe needs one of exec, http, tcp or grpc".into()),
            n => return Err(format!("a probe has exactly one of exec, http, tcp or grpc, found {n}")),
        };
        let p = Probe {
            check,
            period: r.period.unwrap_or(Dur(Duration::from_secs(10))),
            timeout: r.timeout.unwrap_or(Dur(Duration::from_secs(1))),
            initial_delay: r.initial_delay.unwrap_or(Dur(Duration::ZERO)),
            failure_threshold: r.failure_threshold.unwrap_or(3),
            success_threshold: r.success_threshold.unwrap_or(1),
        };
        if p.period.0.is_zero() || p.timeout.0.is_zero() {
            return Err("probe period and timeout must be more than 0s".into());
        }
        if p.failure_threshold == 0 || p.success_threshold == 0 {
            return Err("probe failure_threshold and success_threshold must be at least 1".into());
        }
        Ok(p)
    }
}

impl From<Probe> for RawProbe {
    fn from(p: Probe) -> RawProbe {
        let mut r = RawProbe {
            exec: None,
            http: None,
            tcp: None,
            grpc: None,
            period: Some(p.period),
            timeout: Some(p.timeout),
            initial_delay: Some(p.initial_delay),
            failure_threshold: Some(p.failure_threshold),
            success_threshold: Some(p.success_threshold),
        };
        match p.check {
            Check::Exec { command } => r.exec = Some(ExecCheck { command }),
            Check::Http { port, path } => r.http = Some(HttpCheck { port, path }),
            Check::Tcp { port } => r.tcp = Some(TcpCheck { port }),
            Check::Grpc { port, service } => r.grpc = Some(GrpcCheck { port, service }),
        }
        r
    }
}

impl Probe {
    /// The port this probe targets, if it names one.
    pub fn port(&self) -> Option<&PortRef> {
        match &self.check {
            Check::Exec { .. } => None,
            Check::Http { port, .. } | Check::Tcp { port } | Check::Grpc { port, .. } => Some(port),
        }
    }
}
