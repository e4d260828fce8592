//! The hypervisor's part for whole instances, played by the test: the one
//! stand-in issue #15 allows (see also [`super::hypervisor`] for single
//! disks). moto keeps EC2's books (which volume is attached to which
//! instance) but attaches nothing to any machine; on EC2 the Nitro card
//! then presents the volume to the instance as an NVMe namespace, which
//! udev links as `/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol…`.
//!
//! [`Ec2Host`] plays that card for the instances it serves: a thread polls
//! moto's DescribeVolumes every [`POLL`] and, for every volume attached to
//! one of those instances, exposes a loop device over the volume's image
//! file under the by-id name; when the attachment goes (detach, forced or
//! not) the link and the loop device go. The image (one sparse file per
//! volume ID, sized from the volume) stays across detaches, so what was
//! written on one instance is there on the next; it goes when the volume is
//! deleted. A volume that grows (ModifyVolume) grows its image and the loop
//! device (`losetup -c`), as EBS shows a resize to the guest. Drop stops the
//! thread and removes every link, loop device and image, also when the test
//! failed.
//!
//! The by-id directory is the host's, shared by every test and engineer:
//! moto's volume IDs are 17 random hex digits, so two fixtures never expose
//! the same name, and an existing link is never replaced (reported as an
//! error instead). All instances served by one fixture share this host's
//! /dev, so a volume attached to instance A is visible to a node process
//! serving B as well; the tests call B only for what is attached to B.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::VolumeAttachmentState;
use csi_cloud::aws::Clients;

/// How often the stand-in asks moto for the attachments. The lag between
/// an attachment and its device is at most this plus one DescribeVolumes
/// and one `losetup`; the node's `--device-wait` (10 s) covers it.
pub const POLL: Duration = Duration::from_millis(100);

const GIB: u64 = 1 << 30;

/// One volume exposed to an instance.
#[derive(Clone, Debug)]
pub struct Exposed {
    pub instance: String,
    /// `/dev/loopN`.
    pub loop_dev: String,
    /// The by-id link.
    pub link: PathBuf,
    size: u64,
}

#[derive(Default)]
struct State {
    /// Volume ID → where it is exposed.
    exposed: BTreeMap<String, Exposed>,
    /// Volume IDs that have an image file.
    images: BTreeSet<String>,
    /// Completed polls.
    polls: u64,
    /// What went wrong (the test asserts there is nothing).
    errors: Vec<String>,
}

/// The data plane of the instances it serves. See the module docs.
pub struct Ec2Host {
    state: Arc<(Mutex<State>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: tempfile::TempDir,
}

fn run(prog: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(prog).args(args).output().map_err(|e| format!("run {prog}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{prog} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Ec2Host {
    /// Starts serving `instances` of the moto at `endpoint`.
    pub fn start(endpoint: &str, instances: &[String]) -> Ec2Host {
        let dir = tempfile::Builder::new().prefix("csi-cloud-ec2host-").tempdir_in("/var/tmp").unwrap();
        let state = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let clients = Clients::for_emulator(endpoint, testkit::moto::REGION, "testing", "testing");
        let served: BTreeSet<String> = instances.iter().cloned().collect();
        let (st, sp, images) = (Arc::clone(&state), Arc::clone(&stop), dir.path().to_path_buf());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            while !sp.load(Ordering::Relaxed) {
                let started = Instant::now();
                let seen = rt.block_on(attachments(&clients, &served));
                {
                    let (lock, cv) = &*st;
                    let mut s = lock.lock().unwrap();
                    match seen {
                        Ok(seen) => reconcile(&mut s, &images, &seen),
                        Err(e) => s.errors.push(e),
                    }
                    s.polls += 1;
                    cv.notify_all();
                }
                std::thread::sleep(POLL.saturating_sub(started.elapsed()));
            }
        });
        Ec2Host { state, stop, thread: Some(thread), dir }
    }

    /// Waits until the stand-in has looked at moto twice since this call,
    /// so every attachment change made before it is on the host.
    pub fn settle(&self) {
        let (lock, cv) = &*self.state;
        let s = lock.lock().unwrap();
        let until = s.polls + 2;
        let (s, timeout) =
            cv.wait_timeout_while(s, Duration::from_secs(30), |s| s.polls < until && s.errors.is_empty()).unwrap();
        assert!(!timeout.timed_out(), "the EC2 host stand-in did not poll moto for 30 s");
        assert!(s.errors.is_empty(), "the EC2 host stand-in failed: {:?}", s.errors);
    }

    /// Volume ID → instance, for what is exposed now.
    pub fn exposed(&self) -> BTreeMap<String, String> {
        let s = self.state.0.lock().unwrap();
        s.exposed.iter().map(|(v, e)| (v.clone(), e.instance.clone())).collect()
    }

    /// What went wrong so far.
    pub fn errors(&self) -> Vec<String> {
        self.state.0.lock().unwrap().errors.clone()
    }

    /// The directory holding the volume images (`<volume ID>.img`).
    pub fn image_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Loop devices (any process's) whose backing file is one of this
    /// stand-in's images, as `(device, volume ID)`.
    pub fn loop_devices(&self) -> Vec<(String, String)> {
        let out = run("losetup", &["--list", "--noheadings", "--raw", "--output", "NAME,BACK-FILE"]).unwrap();
        out.lines()
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(dev, back)| {
                let back = Path::new(back.trim_end_matches(" (deleted)"));
                (back.parent() == Some(self.dir.path()))
                    .then(|| (dev.to_string(), back.file_stem().unwrap_or_default().to_string_lossy().into_owned()))
            })
            .collect()
    }
}

impl Drop for Ec2Host {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut s = self.state.0.lock().unwrap();
        for (_, e) in std::mem::take(&mut s.exposed) {
            unexpose(&e);
        }
        // The images go with the temp dir.
    }
}

/// Volume ID → (instance, size in bytes) for the volumes attached to a
/// served instance; `None` as instance for a volume attached elsewhere or
/// nowhere (its image is kept).
async fn attachments(
    clients: &Clients,
    served: &BTreeSet<String>,
) -> Result<HashMap<String, (Option<String>, u64)>, String> {
    let mut out = HashMap::new();
    let mut pages = clients.ec2.describe_volumes().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| format!("DescribeVolumes: {}", aws_sdk_ec2::error::DisplayErrorContext(e)))?;
        for v in page.volumes() {
            let Some(id) = v.volume_id() else { continue };
            let on = v
                .attachments()
                .iter()
                .filter(|a| a.state() == Some(&VolumeAttachmentState::Attached))
                .filter_map(|a| a.instance_id())
                .find(|i| served.contains(*i))
                .map(str::to_string);
            out.insert(id.to_string(), (on, v.size().unwrap_or(0).max(0) as u64 * GIB));
        }
    }
    Ok(out)
}

fn reconcile(s: &mut State, images: &Path, seen: &HashMap<String, (Option<String>, u64)>) {
    // Detached, moved or deleted: the device goes.
    let gone: Vec<String> = s
        .exposed
        .iter()
        .filter(|(vol, e)| seen.get(*vol).and_then(|(on, _)| on.as_ref()) != Some(&e.instance))
        .map(|(vol, _)| vol.clone())
        .collect();
    for vol in gone {
        if let Some(e) = s.exposed.remove(&vol) {
            unexpose(&e);
        }
    }
    // Deleted: the data goes.
    let deleted: Vec<String> = s.images.iter().filter(|v| !seen.contains_key(*v)).cloned().collect();
    for vol in deleted {
        let _ = std::fs::remove_file(images.join(format!("{vol}.img")));
        s.images.remove(&vol);
    }
    for (vol, (on, size)) in seen {
        let Some(instance) = on else { continue };
        let image = images.join(format!("{vol}.img"));
        let result = match s.exposed.get_mut(vol) {
            // Grown (ModifyVolume): the guest sees the new size.
            Some(e) if e.size < *size => grow(&image, e, *size),
            Some(_) => Ok(()),
            None => expose(vol, instance, &image, *size).map(|e| {
                s.images.insert(vol.clone());
                s.exposed.insert(vol.clone(), e);
            }),
        };
        if let Err(e) = result {
            s.errors.push(format!("volume {vol} on {instance}: {e}"));
        }
    }
}

fn expose(vol: &str, instance: &str, image: &Path, size: u64) -> Result<Exposed, String> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(image)
        .map_err(|e| format!("{}: {e}", image.display()))?;
    if f.metadata().map_err(|e| e.to_string())?.len() < size {
        f.set_len(size).map_err(|e| format!("size {}: {e}", image.display()))?;
    }
    let link = csi_cloud::device::nvme_path(vol).map_err(|e| e.to_string())?;
    if link.symlink_metadata().is_ok() {
        return Err(format!("{} exists already: another fixture's, or left by a crashed run", link.display()));
    }
    let loop_dev = run("losetup", &["-f", "--show", &image.to_string_lossy()])?;
    std::fs::create_dir_all(csi_cloud::device::BY_ID_DIR).map_err(|e| e.to_string())?;
    if let Err(e) = std::os::unix::fs::symlink(&loop_dev, &link) {
        let _ = run("losetup", &["-d", &loop_dev]);
        return Err(format!("link {}: {e}", link.display()));
    }
    Ok(Exposed { instance: instance.to_string(), loop_dev, link, size })
}

fn grow(image: &Path, e: &mut Exposed, size: u64) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .and_then(|f| f.set_len(size))
        .map_err(|err| format!("grow {}: {err}", image.display()))?;
    run("losetup", &["-c", &e.loop_dev])?;
    e.size = size;
    Ok(())
}

/// Removes the link, then frees the loop device. A device still mounted
/// (a node that did not unstage: a test failure) is freed by the kernel
/// once its last mount goes (`losetup -d` sets autoclear).
fn unexpose(e: &Exposed) {
    let _ = std::fs::remove_file(&e.link);
    let _ = run("losetup", &["-d", &e.loop_dev]);
}
