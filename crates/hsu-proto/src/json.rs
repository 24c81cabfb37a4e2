//! How `hsu.v1` messages print as JSON (`hsu ... -o json|yaml`): every message derives
//! `serde::Serialize` with the proto's field names (build.rs); the few fields whose zero value
//! means "none" print as null through these, a deployment's spec as the JSON it holds, and a
//! token's kind and role as their names.

use serde::Serializer;

/// `0` as null, any other number as itself.
pub fn zero_as_null<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    match *v {
        0 => s.serialize_none(),
        n => s.serialize_u64(n),
    }
}

/// The empty string as null, any other as itself.
pub fn empty_as_null<S: Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
    if v.is_empty() {
        s.serialize_none()
    } else {
        s.serialize_str(v)
    }
}

/// A token's kind by name: `join` or `api`.
pub fn token_kind<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if *v == crate::v1::TokenKind::Api as i32 { "api" } else { "join" })
}

/// An API token's role by name: `admin` or `read-only`.
pub fn api_role<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if *v == crate::v1::ApiRole::ReadOnly as i32 { "read-only" } else { "admin" })
}

/// A string that holds JSON, as that JSON (null if it holds none).
pub fn parsed<S: Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
    let value: serde_json::Value = serde_json::from_str(v).unwrap_or_default();
    serde::Serialize::serialize(&value, s)
}

#[cfg(test)]
mod tests {
    use crate::v1::{DeploymentDetail, DeploymentInfo, JobRunInfo, RevisionInfo};

    #[test]
    fn none_like_fields_print_as_null_and_the_spec_as_its_json() {
        let d = DeploymentDetail {
            deployment: Some(DeploymentInfo {
                name: "web".into(),
                rolled_back_from: 0,
                failure: String::new(),
                ..Default::default()
            }),
            revisions: vec![RevisionInfo { number: 3, created_ms: 5, command: "x".into(), current: true }],
            events: vec![],
            instances: vec![],
            spec_json: r#"{"replicas":2}"#.into(),
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["deployment"]["name"], "web");
        assert!(v["deployment"]["rolled_back_from"].is_null() && v["deployment"]["failure"].is_null());
        assert_eq!(v["deployment"]["message"], "", "an ordinary string stays a string");
        assert_eq!(v["revisions"][0]["revision"], 3);
        assert!(v["revisions"][0].get("number").is_none());
        assert_eq!(v["spec"]["replicas"], 2);
        assert!(v.get("spec_json").is_none());
        let r = serde_json::to_value(JobRunInfo { finished_ms: 9, ..Default::default() }).unwrap();
        assert_eq!(r["finished_ms"], 9);
    }

    /// The keys scripts read (`-o json`): the names the CLI printed before the messages printed
    /// themselves, plus fields added since (named in the second list).
    #[test]
    fn the_printed_field_names_stay() {
        use crate::v1::*;
        fn keys<T: serde::Serialize>(v: T) -> Vec<String> {
            let mut k: Vec<String> = serde_json::to_value(v).unwrap().as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        }
        fn names(today: &str, added: &str) -> Vec<String> {
            let mut k: Vec<String> =
                today.split_whitespace().chain(added.split_whitespace()).map(String::from).collect();
            k.sort();
            k
        }
        assert_eq!(
            keys(DeploymentInfo::default()),
            names("namespace name replicas ready up_to_date available total revision stable_revision phase paused generation rolled_back_from unplaced message failure", "")
        );
        assert_eq!(
            keys(InstanceInfo::default()),
            names("name namespace deployment revision node node_id state ready desired restarts message", "created_ms")
        );
        assert_eq!(
            keys(JobInfo::default()),
            names("namespace name completions parallelism retries dispatch_only runs unplaced message", "")
        );
        assert_eq!(keys(JobRunInfo::default()), names("run phase succeeded failed started_ms finished_ms env", ""));
        assert_eq!(keys(DeploymentDetail::default()), names("deployment revisions events instances spec", ""));
        assert_eq!(keys(RevisionInfo::default()), names("revision created_ms command current", ""));
        assert_eq!(keys(AppliedObject::default()), names("kind namespace name result revision", ""));
        assert_eq!(
            keys(StatusResponse::default()),
            names("leader leader_id term commit_index applied_index cluster_name served_by members", "")
        );
        assert_eq!(keys(Member::default()), names("id name role address api_address healthy matched_index", ""));
        assert_eq!(
            keys(TokenInfo::default()),
            names("id kind role created_unix_ms expires_unix_ms uses_left revoked description", "")
        );
        assert_eq!(keys(CreateTokenResponse::default()), names("token id expires_unix_ms", ""));
        assert_eq!(keys(ServiceInfo::default()), names("namespace name deployment port endpoints exists", ""));
        assert_eq!(keys(ServiceEndpoint::default()), names("instance node node_id address ready", ""));
        let t = TokenInfo { kind: TokenKind::Api as i32, role: ApiRole::ReadOnly as i32, ..Default::default() };
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!((v["kind"].as_str(), v["role"].as_str()), (Some("api"), Some("read-only")));
        assert!(v["uses_left"].is_null(), "unlimited uses print as null");
        assert_eq!(serde_json::to_value(TokenInfo::default()).unwrap()["kind"], "join");
        assert_eq!(
            keys(Node::default()),
            names("id name role address api_address version joined_unix_ms ready cpu_millis memory_bytes labels units last_report_ms", "")
        );
    }
}
