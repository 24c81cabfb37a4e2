//! The rolling-update strategy of a deployment, as Kubernetes defines it: surge and
//! unavailability as counts or percentages, minReady, the progress deadline, rollback and canary.

use super::*;

/// The rolling update, as Kubernetes defines it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Strategy {
    /// Instances above `replicas` allowed during an update (rounded up from a percentage).
    #[serde(default = "quarter")]
    pub max_surge: IntOrPercent,
    /// Instances below `replicas` allowed to be unavailable (rounded down from a percentage).
    #[serde(default = "quarter")]
    pub max_unavailable: IntOrPercent,
    /// How long a new instance must stay ready before it counts as available.
    #[serde(default = "zero")]
    pub min_ready: Dur,
    /// A rollout that makes no progress for this long has failed.
    #[serde(default = "ten_minutes")]
    pub progress_deadline: Dur,
    /// When a rollout fails, go back to the last revision that was fully rolled out.
    #[serde(default)]
    pub auto_rollback: bool,
    /// Move only this many instances to a new revision, then pause until `hsu rollout resume`
    /// (0: no canary step).
    #[serde(default)]
    pub canary: u32,
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy {
            max_surge: quarter(),
            max_unavailable: quarter(),
            min_ready: zero(),
            progress_deadline: ten_minutes(),
            auto_rollback: false,
            canary: 0,
        }
    }
}

fn quarter() -> IntOrPercent {
    IntOrPercent::Percent(25)
}

fn zero() -> Dur {
    Dur(std::time::Duration::ZERO)
}

fn ten_minutes() -> Dur {
    Dur(std::time::Duration::from_secs(600))
}

impl Strategy {
    /// (max surge, max unavailable) as counts for `replicas`. Like Kubernetes: surge rounds up,
    /// unavailable rounds down, and when both come to zero one instance may be unavailable.
    pub fn counts(&self, replicas: u32) -> (u32, u32) {
        let surge = self.max_surge.count(replicas, true);
        let unavailable = self.max_unavailable.count(replicas, false);
        if surge == 0 && unavailable == 0 {
            (0, 1)
        } else {
            (surge, unavailable)
        }
    }
}

/// `2` or `"25%"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntOrPercent {
    Int(u32),
    Percent(u32),
}

impl IntOrPercent {
    pub fn count(self, of: u32, round_up: bool) -> u32 {
        match self {
            IntOrPercent::Int(n) => n,
            IntOrPercent::Percent(p) => {
                let scaled = u64::from(of) * u64::from(p);
                let n = if round_up { scaled.div_ceil(100) } else { scaled / 100 };
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        }
    }

    pub fn is_zero(self) -> bool {
        matches!(self, IntOrPercent::Int(0) | IntOrPercent::Percent(0))
    }
}

impl fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrPercent::Int(n) => write!(f, "{n}"),
            IntOrPercent::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for IntOrPercent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for IntOrPercent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = IntOrPercent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a count such as 1 or a percentage such as \"25%\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrPercent, E> {
                u32::try_from(v).map(IntOrPercent::Int).map_err(|_| E::custom(format!("{v} is too large")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrPercent, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("expected zero or more, found {v}")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrPercent, E> {
                let bad = || E::custom(format!("expected a count such as 1 or a percentage such as 25%, found {v:?}"));
                match v.strip_suffix('%') {
                    Some(p) => {
                        let p: u32 = p.trim().parse().map_err(|_| bad())?;
                        if p > 100 {
                            return Err(E::custom(format!("percentage {v:?} is above 100%")));
                        }
                        Ok(IntOrPercent::Percent(p))
                    }
                    None => v.trim().parse().map(IntOrPercent::Int).map_err(|_| bad()),
                }
            }
        }
        d.deserialize_any(V)
    }
}
