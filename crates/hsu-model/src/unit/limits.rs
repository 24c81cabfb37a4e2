//! Resource limits of a unit: cgroup limits of its group (memory, CPU, pids) and rlimits of
//! each process; CPU written as cores or millicores.

use super::*;

/// Resource limits. `memory`, `cpu` and `pids` are cgroup limits on the unit's whole group of
/// processes; the others are rlimits of each process (inherited by its children).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory (RSS + page cache) of the unit's cgroup; past it the kernel OOM-kills.
    #[serde(default)]
    pub memory: Option<ByteSize>,
    /// CPU time as cores: `0.5`, `2`, or `500m` (millicores).
    #[serde(default)]
    pub cpu: Option<MilliCpu>,
    /// Processes and threads in the unit's cgroup.
    #[serde(default)]
    pub pids: Option<u64>,
    /// RLIMIT_NOFILE.
    #[serde(default)]
    pub open_files: Option<u64>,
    /// RLIMIT_NPROC (per user, as the kernel counts it).
    #[serde(default)]
    pub processes: Option<u64>,
    /// RLIMIT_CORE, in bytes (0: no core dumps).
    #[serde(default)]
    pub core: Option<ByteSize>,
    /// RLIMIT_AS.
    #[serde(default)]
    pub address_space: Option<ByteSize>,
}

impl Limits {
    pub fn needs_cgroup(&self) -> bool {
        self.memory.is_some() || self.cpu.is_some() || self.pids.is_some()
    }
}

/// CPU in thousandths of a core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MilliCpu(pub u32);

impl<'de> Deserialize<'de> for MilliCpu {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = MilliCpu;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of cores such as 0.5 or 2, or millicores such as 500m")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<MilliCpu, E> {
                if !(0.001..=4096.0).contains(&v) {
                    return Err(E::custom(format!("expected between 0.001 and 4096 cores, found {v}")));
                }
                Ok(MilliCpu((v * 1000.0).round() as u32))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<MilliCpu, E> {
                self.visit_f64(v as f64)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<MilliCpu, E> {
                self.visit_f64(v as f64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MilliCpu, E> {
                match v.strip_suffix('m').map(str::parse::<u32>) {
                    Some(Ok(m)) if m > 0 => Ok(MilliCpu(m)),
                    _ => match v.parse::<f64>() {
                        Ok(f) => self.visit_f64(f),
                        Err(_) => Err(E::custom(format!(
                            "expected cores such as 0.5 or millicores such as 500m, found {v:?}"
                        ))),
                    },
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for MilliCpu {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}m", self.0))
    }
}
