//! `csi-rbd takeover`: the admin command that moves a volume off a dead
//! node by hand, the same fencing ControllerUnpublishVolume does
//! ([`crate::attach::fence`]):
//!
//! ```text
//! csi-rbd takeover --cluster-config FILE --volume-id ID --node NODE
//!                  [--user admin] [--keyfile FILE] [--pool POOL] [--image IMAGE]
//! ```
//!
//! The key comes from `--keyfile` (a bare base64 key, or a keyring with a
//! `key = …` line) or the `CEPH_USER_KEY` environment variable, never from
//! an argument (it would show in `ps`). The pool and image come from the
//! volume ID (ceph-csi's encoding, image `csi-vol-<uuid>`) unless given.
//! It blocklists the client address NODE recorded when it staged, breaks
//! NODE's attach lock and removes its record; then another node can stage
//! the volume at once. Prints what it did on stdout; exit status 0 on
//! success, 1 on failure, 2 on a bad command line.

use std::time::Duration;

use crate::attach;
use crate::config::ClusterConfig;
use crate::volume_id::VolumeId;

/// Bound on connecting and on each Ceph call.
pub const TIMEOUT: Duration = Duration::from_secs(15);

const USAGE: &str = "usage: csi-rbd takeover --cluster-config FILE --volume-id ID --node NODE \
                     [--user admin] [--keyfile FILE] [--pool POOL] [--image IMAGE]\n\
                     The key is read from --keyfile or the CEPH_USER_KEY environment variable.";

/// The parsed command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Args {
    /// `--cluster-config`.
    pub cluster_config: String,
    /// `--volume-id`.
    pub volume_id: String,
    /// `--node`: the dead node.
    pub node: String,
    /// `--user` (default admin).
    pub user: String,
    /// `--keyfile`.
    pub keyfile: Option<String>,
    /// `--pool` (default: from the volume ID).
    pub pool: Option<String>,
    /// `--image` (default: `csi-vol-<uuid>`).
    pub image: Option<String>,
}

/// Parses the arguments after `takeover`.
pub fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args { user: "admin".into(), ..Args::default() };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag.as_str(), None),
        };
        if name == "--help" || name == "-h" {
            return Err(USAGE.into());
        }
        let mut value =
            || inline.clone().or_else(|| it.next().cloned()).ok_or_else(|| format!("{name} needs a value\n{USAGE}"));
        match name {
            "--cluster-config" => a.cluster_config = value()?,
            "--volume-id" => a.volume_id = value()?,
            "--node" => a.node = value()?,
            "--user" => a.user = value()?,
            "--keyfile" => a.keyfile = Some(value()?),
            "--pool" => a.pool = Some(value()?),
            "--image" => a.image = Some(value()?),
            "--key" => {
                return Err(
                    "--key is not accepted (a key in an argument shows in ps): use --keyfile or CEPH_USER_KEY".into()
                )
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    for (v, n) in [(&a.cluster_config, "--cluster-config"), (&a.volume_id, "--volume-id"), (&a.node, "--node")] {
        if v.is_empty() {
            return Err(format!("{n} is required\n{USAGE}"));
        }
    }
    Ok(a)
}

/// A key from a keyfile: the bare key, or the `key = …` line of a keyring.
pub fn key_from_file_text(text: &str) -> Option<String> {
    let from_keyring = text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "key").then(|| v.trim().to_string())
    });
    from_keyring.or_else(|| Some(text.trim().to_string())).filter(|k| !k.is_empty())
}

fn run(a: &Args) -> Result<String, String> {
    let key = match &a.keyfile {
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|e| format!("read --keyfile {f}: {e}"))?;
            key_from_file_text(&text).ok_or_else(|| format!("--keyfile {f}: no key in it"))?
        }
        None => std::env::var("CEPH_USER_KEY")
            .ok()
            .filter(|k| !k.trim().is_empty())
            .ok_or("no key: give --keyfile FILE or set CEPH_USER_KEY")?,
    };
    let config = ClusterConfig::load(std::path::Path::new(&a.cluster_config)).map_err(|e| e.to_string())?;
    let id = VolumeId::parse(&a.volume_id);
    let cluster_id = match &id {
        Ok(id) => id.cluster_id.clone(),
        Err(e) if a.pool.is_none() || a.image.is_none() => {
            return Err(format!("--volume-id: {e} (give --pool and --image for a static volume)"))
        }
        Err(_) => config.clusters.first().map(|c| c.cluster_id.clone()).ok_or("the cluster config lists no cluster")?,
    };
    let monitors = config.cluster(&cluster_id).map_err(|e| e.to_string())?.monitors.clone();
    let rbd = ceph::connect(&ceph::ConnectSpec { monitors, user: a.user.clone(), key, timeout: TIMEOUT })
        .map_err(|e| format!("connect to cluster {cluster_id:?}: {e}"))?;
    let pool = match (&a.pool, &id) {
        (Some(p), _) => p.clone(),
        (None, Ok(id)) => rbd.pool_name(id.pool_id).map_err(|e| e.to_string())?,
        (None, Err(e)) => return Err(e.to_string()),
    };
    let image = match (&a.image, &id) {
        (Some(i), _) => i.clone(),
        (None, Ok(id)) => format!("csi-vol-{}", id.uuid),
        (None, Err(e)) => return Err(e.to_string()),
    };
    let f = attach::fence(rbd.as_ref(), &pool, &image, &a.node).map_err(|s| s.message().to_string())?;
    let mut out = format!("volume {} (rbd image {pool}/{image}): ", a.volume_id);
    match &f.blocklisted {
        Some(addr) => out.push_str(&format!("node {:?}'s client {addr} blocklisted; ", a.node)),
        None => out.push_str(&format!("node {:?} had recorded no mapping; ", a.node)),
    }
    out.push_str(&format!("{} attach lock(s) broken; another node may stage it now", f.locks_broken));
    Ok(out)
}

/// Runs the command; returns the exit status.
pub fn main(args: &[String]) -> i32 {
    let a = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("csi-rbd takeover: {e}");
            return 2;
        }
    };
    match run(&a) {
        Ok(msg) => {
            // An admin command, not the plugin: its result is its output.
            #[allow(clippy::print_stdout)]
            {
                println!("{msg}");
            }
            0
        }
        Err(e) => {
            eprintln!("csi-rbd takeover: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn arguments() {
        let a = parse(&s(&["--cluster-config", "/c.json", "--volume-id=V", "--node", "a", "--keyfile", "/k"])).unwrap();
        assert_eq!((a.cluster_config.as_str(), a.volume_id.as_str(), a.node.as_str()), ("/c.json", "V", "a"));
        assert_eq!((a.user.as_str(), a.keyfile.as_deref()), ("admin", Some("/k")));
        assert!(parse(&s(&["--volume-id", "V", "--node", "a"])).unwrap_err().contains("--cluster-config is required"));
        assert!(parse(&s(&["--key", "K"])).unwrap_err().contains("ps"));
        assert!(parse(&s(&["--node"])).is_err());
    }

    #[test]
    fn keyfiles_hold_a_key_or_a_keyring() {
        assert_eq!(key_from_file_text("AQB==\n").as_deref(), Some("AQB=="));
        assert_eq!(
            key_from_file_text("[client.admin]\n\tkey = AQC==\n\tcaps mon = \"allow *\"\n").as_deref(),
            Some("AQC==")
        );
        assert_eq!(key_from_file_text("  \n"), None);
    }
}
