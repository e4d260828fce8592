//! ceph-csi's cluster config (`config.json`, `--cluster-config FILE`): a
//! list of clusters, each with the `clusterID` that StorageClasses name and
//! its monitors. Parsed without I/O ([`ClusterConfig::parse`]); read from
//! the file on every lookup ([`ClusterConfig::load`]), because Kubernetes
//! updates a mounted ConfigMap in place and ceph-csi users expect a new
//! cluster to work without restarting the driver.
//!
//! ```json
//! [{"clusterID": "rook-ceph", "monitors": ["10.0.0.1:3300", "10.0.0.2:6789"]}]
//! ```
//!
//! Other keys ceph-csi accepts (`cephFS`, `rbd.radosNamespace`,
//! `readAffinity`, …) are ignored, so an existing file loads unchanged.

use std::path::Path;

use serde::Deserialize;

/// One cluster of the config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Cluster {
    /// The ID StorageClasses use in their `clusterID` parameter.
    #[serde(rename = "clusterID")]
    pub cluster_id: String,
    /// Monitor addresses (`host:port`, `[v6]:port`, or a host alone).
    pub monitors: Vec<String>,
}

/// The whole config: every cluster this driver can reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The clusters, in file order.
    pub clusters: Vec<Cluster>,
}

/// Why the config or a lookup in it failed; the message names the file or ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cluster config {path}: {reason}")]
    Read { path: String, reason: String },
    /// The JSON is not a list of `{"clusterID", "monitors"}` objects, or a
    /// cluster is invalid (empty ID, no monitors, duplicate ID).
    #[error("cluster config: {0}")]
    Invalid(String),
    /// No cluster has this ID.
    #[error("clusterID {0:?} is not in the cluster config")]
    UnknownCluster(String),
}

/// The longest clusterID a volume ID can carry (ceph-csi's limit too).
pub const MAX_CLUSTER_ID_LEN: usize = 36;

impl ClusterConfig {
    /// Parses and checks a config.json text.
    pub fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
        let clusters: Vec<Cluster> = serde_json::from_str(text)
            .map_err(|e| ConfigError::Invalid(format!("expected a list of {{\"clusterID\", \"monitors\"}}: {e}")))?;
        for (i, c) in clusters.iter().enumerate() {
            if c.cluster_id.is_empty() || c.cluster_id.len() > MAX_CLUSTER_ID_LEN {
                return Err(ConfigError::Invalid(format!(
                    "entry {i}: clusterID must have 1 to {MAX_CLUSTER_ID_LEN} characters, got {:?}",
                    c.cluster_id
                )));
            }
            if c.monitors.iter().all(|m| m.trim().is_empty()) {
                return Err(ConfigError::Invalid(format!("clusterID {:?} has no monitors", c.cluster_id)));
            }
            if clusters[..i].iter().any(|o| o.cluster_id == c.cluster_id) {
                return Err(ConfigError::Invalid(format!("clusterID {:?} is listed twice", c.cluster_id)));
            }
        }
        Ok(ClusterConfig { clusters })
    }

    /// Reads and parses the file.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        ClusterConfig::parse(&text)
    }

    /// The cluster with this ID.
    pub fn cluster(&self, cluster_id: &str) -> Result<&Cluster, ConfigError> {
        self.clusters
            .iter()
            .find(|c| c.cluster_id == cluster_id)
            .ok_or_else(|| ConfigError::UnknownCluster(cluster_id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ceph_csi_config_json_loads_unchanged() {
        let text = r#"[
          {"clusterID": "rook-ceph", "monitors": ["10.0.0.1:3300", "10.0.0.2:6789"],
           "cephFS": {"subvolumeGroup": "csi"}, "rbd": {"radosNamespace": ""}},
          {"clusterID": "b", "monitors": ["[fd00::1]:3300"]}
        ]"#;
        let c = ClusterConfig::parse(text).unwrap();
        assert_eq!(c.cluster("rook-ceph").unwrap().monitors, ["10.0.0.1:3300", "10.0.0.2:6789"]);
        assert_eq!(c.cluster("b").unwrap().monitors, ["[fd00::1]:3300"]);
        assert_eq!(c.cluster("c").unwrap_err(), ConfigError::UnknownCluster("c".into()));
    }

    #[test]
    fn invalid_configs_say_what_is_wrong() {
        let e = ClusterConfig::parse(r#"{"clusterID": "a"}"#).unwrap_err().to_string();
        assert!(e.contains("expected a list"), "{e}");
        let e = ClusterConfig::parse(r#"[{"clusterID": "a", "monitors": []}]"#).unwrap_err().to_string();
        assert!(e.contains("no monitors"), "{e}");
        let e = ClusterConfig::parse(r#"[{"clusterID": "", "monitors": ["m"]}]"#).unwrap_err().to_string();
        assert!(e.contains("1 to 36"), "{e}");
        let long = "x".repeat(37);
        let e = ClusterConfig::parse(&format!(r#"[{{"clusterID": "{long}", "monitors": ["m"]}}]"#)).unwrap_err();
        assert!(e.to_string().contains("1 to 36"), "{e}");
        let e =
            ClusterConfig::parse(r#"[{"clusterID": "a", "monitors": ["m"]}, {"clusterID": "a", "monitors": ["n"]}]"#)
                .unwrap_err()
                .to_string();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let e = ClusterConfig::load(Path::new("/nonexistent/config.json")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/config.json"), "{e}");
    }
}
