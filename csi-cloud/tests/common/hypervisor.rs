//! The hypervisor's part, played by the test: the one stand-in issue #15
//! allows. On EC2, attaching a volume makes the Nitro card present an NVMe
//! namespace whose serial is the volume ID, and udev links it as
//! `/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol<id>`. Here a loop
//! device over a sparse file is that disk, linked under the same name; the
//! driver finds, formats, mounts and grows it with the code that runs on EC2.
//! Growing the file and `losetup -c` is what an EBS ModifyVolume looks like
//! to the guest (a namespace of a new size). The instance metadata service,
//! also served by the hypervisor on EC2 (169.254.169.254), is played by
//! [`Imds`].

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// One attached "EBS volume": a loop device exposed under its by-id name.
/// Detached (link removed, loop device freed) on drop, also when the test fails.
pub struct EbsDisk {
    pub volume_id: String,
    /// `/dev/loopN`.
    pub loop_dev: String,
    /// The by-id link.
    pub link: PathBuf,
    backing: PathBuf,
    _dir: tempfile::TempDir,
}

fn run(prog: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(prog).args(args).output().unwrap_or_else(|e| panic!("run {prog}: {e}"));
    assert!(out.status.success(), "{prog} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A volume ID no other test (or engineer) on this host uses: the pid,
/// the time and a counter, as 17 hex digits like EC2's.
pub fn unique_volume_id() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("vol-0{:08x}{:04x}{:04x}", nanos, std::process::id() & 0xffff, N.fetch_add(1, Ordering::Relaxed) & 0xffff)
}

impl EbsDisk {
    /// Attaches a new blank volume of `size` bytes.
    pub fn attach(size: u64) -> EbsDisk {
        let dir = tempfile::Builder::new().prefix("h5-ebs-").tempdir_in("/var/tmp").unwrap();
        let backing = dir.path().join("disk.img");
        std::fs::File::create(&backing).unwrap().set_len(size).unwrap();
        let loop_dev = run("losetup", &["-f", "--show", backing.to_str().unwrap()]);
        let volume_id = unique_volume_id();
        let by_id = Path::new(csi_cloud::device::BY_ID_DIR);
        std::fs::create_dir_all(by_id).unwrap();
        let link = csi_cloud::device::nvme_path(&volume_id).unwrap();
        let disk = EbsDisk { volume_id, loop_dev, link, backing, _dir: dir };
        std::os::unix::fs::symlink(&disk.loop_dev, &disk.link).unwrap();
        disk
    }

    /// The volume is modified to `size` bytes; the guest sees the new size.
    pub fn grow(&self, size: u64) {
        std::fs::OpenOptions::new().write(true).open(&self.backing).unwrap().set_len(size).unwrap();
        run("losetup", &["-c", &self.loop_dev]);
    }

    /// Reads `len` bytes at `off` straight from the disk (what EBS holds).
    pub fn read_at(&self, off: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&self.loop_dev).unwrap();
        let mut b = vec![0u8; len];
        f.read_exact_at(&mut b, off).unwrap();
        b
    }

    /// Writes `data` at `off` straight to the disk.
    pub fn write_at(&self, off: u64, data: &[u8]) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&self.loop_dev).unwrap();
        f.write_all_at(data, off).unwrap();
        f.sync_all().unwrap();
    }
}

impl Drop for EbsDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.link);
        // A mount the failed test left would keep the loop device busy:
        // detach it lazily so the device goes once the mount does.
        let _ = std::process::Command::new("losetup").args(["-d", &self.loop_dev]).output();
    }
}
