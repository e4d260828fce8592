//! `cni-ipam remove-host …` and `cni-ipam blocks …`: the admin commands the
//! plugin binary runs when `CNI_COMMAND` is unset and arguments are given.

use std::io::Write;

use super::client::{block_on, ADMIN_DEADLINE};
use super::{block_range, list_blocks, remove_host, DEFAULT_PREFIX};
use etcd_kv::EtcdConfig;

pub const USAGE: &str = "\
usage:
  cni-ipam remove-host --etcd-endpoints URL[,URL…] [--etcd-prefix P] --network NAME HOST
      frees HOST's blocks and every allocation recorded for it
  cni-ipam blocks --etcd-endpoints URL[,URL…] [--etcd-prefix P] --network NAME
      lists the network's blocks with their host and allocation counts
options:
  --etcd-prefix P      default /cni-ipam (the ipam.cluster etcdPrefix)
  --etcd-cafile F, --etcd-certfile F, --etcd-keyfile F   TLS
Without arguments, or with CNI_COMMAND set, cni-ipam is the CNI plugin.";

#[derive(Debug)]
struct Args {
    cmd: String,
    etcd: EtcdConfig,
    network: Option<String>,
    positional: Vec<String>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let Some((cmd, rest)) = args.split_first() else { return Err("no command".into()) };
    let mut a = Args {
        cmd: cmd.clone(),
        etcd: EtcdConfig { endpoints: Vec::new(), prefix: DEFAULT_PREFIX.into(), ..EtcdConfig::default() },
        network: None,
        positional: Vec::new(),
    };
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        if !arg.starts_with("--") {
            a.positional.push(arg.clone());
            continue;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next().cloned()).ok_or(format!("{flag} needs a value"));
        match flag {
            "--etcd-endpoints" => {
                a.etcd.endpoints =
                    value()?.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
            }
            "--etcd-prefix" => a.etcd.prefix = value()?,
            "--etcd-cafile" => a.etcd.ca_file = Some(value()?.into()),
            "--etcd-certfile" => a.etcd.cert_file = Some(value()?.into()),
            "--etcd-keyfile" => a.etcd.key_file = Some(value()?.into()),
            "--network" => a.network = Some(value()?),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if a.etcd.endpoints.is_empty() {
        return Err("--etcd-endpoints is required".into());
    }
    if a.network.as_deref().is_none_or(str::is_empty) {
        return Err("--network is required".into());
    }
    Ok(a)
}

fn run(args: &[String], out: &mut dyn Write) -> Result<(), String> {
    if matches!(args.first().map(String::as_str), Some("-h" | "--help" | "help")) {
        let _ = writeln!(out, "{USAGE}");
        return Ok(());
    }
    let a = parse(args)?;
    let network = a.network.clone().unwrap_or_default();
    let io = |e: std::io::Error| e.to_string();
    match a.cmd.as_str() {
        "remove-host" => {
            let [host] = a.positional.as_slice() else {
                return Err("remove-host takes exactly one HOST".into());
            };
            let r = block_on(&a.etcd.endpoints, ADMIN_DEADLINE, remove_host(&a.etcd, &network, host))
                .map_err(|e| e.to_string())?;
            writeln!(
                out,
                "removed host {host} from network {network}: {} block(s) freed, {} allocation(s) freed",
                r.blocks_freed.len(),
                r.allocations_freed
            )
            .map_err(io)?;
            for b in &r.blocks_freed {
                writeln!(out, "  freed {b}").map_err(io)?;
            }
            for b in &r.blocks_orphaned {
                writeln!(out, "  kept {b} without a host: other hosts still borrow addresses in it").map_err(io)?;
            }
            Ok(())
        }
        "blocks" => {
            if !a.positional.is_empty() {
                return Err(format!("blocks takes no arguments, got {:?}", a.positional));
            }
            let blocks = block_on(&a.etcd.endpoints, ADMIN_DEADLINE, list_blocks(&a.etcd, &network))
                .map_err(|e| e.to_string())?;
            writeln!(
                out,
                "{:<24} {:<20} {:>9} {:>8} {:>6} {:>9}",
                "BLOCK", "HOST", "ALLOCATED", "BORROWED", "FREE", "EXCLUSIVE"
            )
            .map_err(io)?;
            for b in &blocks {
                let cap = block_range(b.cidr).capacity();
                let used = b.value.allocations.len() as u128;
                let host = if b.value.host.is_empty() { "-" } else { b.value.host.as_str() };
                writeln!(
                    out,
                    "{:<24} {:<20} {:>9} {:>8} {:>6} {:>9}",
                    b.cidr.to_string(),
                    host,
                    used,
                    b.value.borrowed(),
                    cap.saturating_sub(used),
                    if b.value.exclusive { "yes" } else { "no" }
                )
                .map_err(io)?;
            }
            Ok(())
        }
        other => Err(format!("unknown command {other:?}")),
    }
}

/// Runs an admin command; returns the process exit code (errors and usage
/// go to stderr).
pub fn main(args: &[String]) -> i32 {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match run(args, &mut out) {
        Ok(()) => 0,
        Err(e) => {
            let _ = out.flush();
            eprintln!("cni-ipam: {e}\n{USAGE}");
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
    fn parses_flags_both_ways() {
        let a =
            parse(&s(&["remove-host", "--etcd-endpoints=http://a:1,http://b:2", "--network", "n1", "node-a"])).unwrap();
        assert_eq!(a.etcd.endpoints, ["http://a:1", "http://b:2"]);
        assert_eq!(a.etcd.prefix, "/cni-ipam");
        assert_eq!(a.positional, ["node-a"]);
        assert!(parse(&s(&["blocks", "--network", "n"])).unwrap_err().contains("--etcd-endpoints"));
        assert!(parse(&s(&["blocks", "--etcd-endpoints", "http://a:1"])).unwrap_err().contains("--network"));
        assert!(parse(&s(&["blocks", "--bogus"])).unwrap_err().contains("unknown option --bogus"));
        assert!(parse(&s(&["blocks", "--network"])).unwrap_err().contains("needs a value"));
    }
}
