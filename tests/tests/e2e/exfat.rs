//! A real exFAT folder for the tests that need one (`names.rs`: a folder that ignores
//! case; `modes.rs`: a folder that keeps no Unix modes).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// An exFAT filesystem mounted through FUSE: a folder that ignores letter case and keeps
/// it, as a Mac's (APFS) and Windows' do, and keeps no Unix modes (every file reads 0600,
/// folders 0700: the mount's `fmask`/`dmask`). Unmounted when dropped.
pub struct Exfat {
    dir: tempfile::TempDir,
    device: String,
}

impl Exfat {
    /// `None` where it cannot be made (not root, no FUSE, no exfat-fuse and exfatprogs):
    /// the test is skipped then, except under CI, where `.ci/run` installs them.
    pub fn mount() -> Option<Exfat> {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("exfat.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        let run = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .stderr(Stdio::null())
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let image = image.to_str().unwrap();
        let device =
            run("mkfs.exfat", &[image]).and_then(|_| run("losetup", &["-f", "--show", image]));
        let Some(device) = device else {
            skip_or_fail("mkfs.exfat or losetup");
            return None;
        };
        // Keys must not be readable by others (the daemon checks): files 0600, folders 0700.
        let opts = "fmask=0177,dmask=0077";
        if run(
            "mount.exfat-fuse",
            &["-o", opts, &device, mount.to_str().unwrap()],
        )
        .is_none()
        {
            let _ = run("losetup", &["-d", &device]);
            skip_or_fail("mount.exfat-fuse");
            return None;
        }
        Some(Exfat { dir, device })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

fn skip_or_fail(what: &str) {
    assert!(
        std::env::var("CI").is_err(),
        "{what} failed: .ci/run installs exfat-fuse and exfatprogs, and CI runs as root"
    );
    eprintln!("{what} failed (needs root, FUSE, exfat-fuse, exfatprogs): test skipped");
}

impl Drop for Exfat {
    fn drop(&mut self) {
        let mount = self.path();
        // The daemons are gone, but FUSE may take a moment to let go.
        for _ in 0..50 {
            let done = Command::new("umount")
                .arg(&mount)
                .stderr(Stdio::null())
                .status();
            if done.is_ok_and(|s| s.success()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}
