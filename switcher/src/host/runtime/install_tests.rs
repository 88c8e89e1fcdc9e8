//! The install's decisions and files, under a directory that stands for a
//! host's `/`. The init.d branch also runs for real on a test host
//! (tests/it/setup_install.rs); the systemd branch cannot run where the
//! suite runs (no systemd), so its choice, its unit text and its steps are
//! checked here, the steps against a recording `systemctl` stand-in.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fs_err as fs;

use super::{root_command, Enabler, Init, InstallError, Now, System};
use crate::host::runtime::RuntimeError;
use crate::host::{Host, HostError};

fn system(root: &Path) -> System {
    System { root: root.to_owned(), systemctl: None, update_rc_d: None, chkconfig: None, euid: 0 }
}

fn dirs(root: &Path, rel: &[&str]) {
    for d in rel {
        fs::create_dir_all(root.join(d)).unwrap();
    }
}

#[test]
fn systemd_is_chosen_when_it_runs_else_init_d_with_the_first_enabler_the_host_has() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    dirs(root, &["etc/rc2.d", "etc/init.d"]);
    let mut s = system(root);
    s.systemctl = Some("/usr/bin/systemctl".into());
    s.update_rc_d = Some("/usr/sbin/update-rc.d".into());
    s.chkconfig = Some("/sbin/chkconfig".into());
    // systemctl installed, but systemd not running (a container, a chroot): init.d.
    let plan = s.plan("shop", Path::new("/srv/shop")).unwrap();
    assert_eq!((plan.init, plan.enabler), (Init::InitD, Enabler::UpdateRcD));
    assert_eq!(plan.dest, root.join("etc/init.d/ferry-shop"));
    assert_eq!(plan.rc.as_deref(), Some(root.join("etc").as_path()));

    s.update_rc_d = None;
    assert_eq!(s.plan("shop", Path::new("/srv/shop")).unwrap().enabler, Enabler::Chkconfig);
    s.chkconfig = None;
    assert_eq!(s.plan("shop", Path::new("/srv/shop")).unwrap().enabler, Enabler::RcLinks);

    // Red Hat's layout: /etc/rc.d/rc2.d.
    let t2 = tempfile::tempdir().unwrap();
    dirs(t2.path(), &["etc/rc.d/rc2.d", "etc/rc.d/init.d"]);
    let plan = system(t2.path()).plan("shop", Path::new("/srv/shop")).unwrap();
    assert_eq!((plan.enabler, plan.rc), (Enabler::RcLinks, Some(t2.path().join("etc/rc.d"))));

    // Neither systemd nor rc directories.
    let t3 = tempfile::tempdir().unwrap();
    let e = system(t3.path()).plan("shop", Path::new("/srv/shop")).unwrap_err();
    assert!(matches!(e, InstallError::UnknownInit { .. }), "{e}");
    assert!(e.to_string().contains("neither systemd"), "{e}");
    assert!(e.to_string().ends_with("start /srv/shop/.ferry/init.d/ferry-shop at boot by hand"), "{e}");

    // systemd runs: /run/systemd/system exists (what sd_booted() checks).
    dirs(root, &["run/systemd/system"]);
    let plan = s.plan("shop", Path::new("/srv/shop")).unwrap();
    assert_eq!((plan.init, plan.enabler), (Init::Systemd, Enabler::Systemctl));
    assert_eq!(plan.dest, root.join("etc/systemd/system/ferry-shop.service"));
}

#[test]
fn the_root_commands_are_whole_for_each_enabler() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    dirs(root, &["etc/rc2.d"]);
    let src = Path::new("/srv/shop/.ferry/init.d/ferry-shop");
    let mut s = system(root);
    let links = root_command(&s.plan("shop", Path::new("/srv/shop")).unwrap(), src, "ferry-shop");
    assert!(links.starts_with(&format!("sudo cp {} {}/etc/init.d/ferry-shop && ", src.display(), root.display())));
    assert!(links.contains("sudo ln -sf ../init.d/ferry-shop"), "{links}");
    s.update_rc_d = Some("/usr/sbin/update-rc.d".into());
    assert!(root_command(&s.plan("shop", Path::new("/srv/shop")).unwrap(), src, "ferry-shop")
        .ends_with("&& sudo update-rc.d ferry-shop defaults"));
    s.update_rc_d = None;
    s.chkconfig = Some("/sbin/chkconfig".into());
    assert!(root_command(&s.plan("shop", Path::new("/srv/shop")).unwrap(), src, "ferry-shop")
        .ends_with("&& sudo chkconfig --add ferry-shop"));
    dirs(root, &["run/systemd/system"]);
    let unit = Path::new("/srv/shop/.ferry/ferry-shop.service");
    assert_eq!(
        root_command(&s.plan("shop", Path::new("/srv/shop")).unwrap(), unit, "ferry-shop"),
        format!(
            "sudo cp {} {}/etc/systemd/system/ferry-shop.service && sudo systemctl daemon-reload && sudo systemctl enable ferry-shop",
            unit.display(),
            root.display()
        )
    );
}

/// A deploy directory with setup's unit and init script, and no supervisord.
fn deployed() -> (tempfile::TempDir, Host) {
    let t = tempfile::tempdir().unwrap();
    let host = Host::new(t.path().join("srv/shop"));
    fs::create_dir_all(host.root().join(".ferry/init.d")).unwrap();
    let conf = host.root().join(".ferry/supervisord.conf");
    fs::write(host.root().join(".ferry/ferry-shop.service"), host.systemd_unit("shop", &conf)).unwrap();
    let script = host.root().join(".ferry/init.d/ferry-shop");
    fs::write(&script, host.init_script("shop")).unwrap();
    fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (t, host)
}

#[test]
fn without_an_enabler_tool_the_rc_links_are_made_by_hand_once() {
    let (t, host) = deployed();
    let root = t.path().join("host");
    dirs(
        &root,
        &["etc/init.d", "etc/rc0.d", "etc/rc1.d", "etc/rc2.d", "etc/rc3.d", "etc/rc4.d", "etc/rc5.d", "etc/rc6.d"],
    );
    let s = system(&root);
    let installed = host.install_into(&s, "shop").unwrap();
    assert_eq!((installed.init, installed.enabled_with, installed.now), (Init::InitD, Enabler::RcLinks, Now::Stopped));
    let dest = root.join("etc/init.d/ferry-shop");
    assert_eq!(installed.did[0], format!("installed {}", dest.display()));
    assert!(installed.did[1].starts_with("enabled at boot: S20ferry-shop links"), "{:?}", installed.did);
    assert_eq!(fs::read(&dest).unwrap(), fs::read(host.root().join(".ferry/init.d/ferry-shop")).unwrap());
    assert_eq!(fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o755);
    for (n, link) in [(0, "K80"), (1, "K80"), (2, "S20"), (3, "S20"), (4, "S20"), (5, "S20"), (6, "K80")] {
        let at = root.join(format!("etc/rc{n}.d/{link}ferry-shop"));
        assert_eq!(fs::read_link(&at).unwrap(), PathBuf::from("../init.d/ferry-shop"), "{}", at.display());
    }
    assert!(installed.now_line("shop").contains("`service ferry-shop start` starts it"));

    // Again: nothing to do.
    let again = host.install_into(&s, "shop").unwrap();
    assert!(again.did.is_empty(), "{:?}", again.did);

    // An older ferry's script for this directory is replaced; the links stay.
    let conf = host.root().join(".ferry/supervisord.conf");
    fs::write(&dest, format!("#!/bin/sh\nCONF={}\n", conf.display())).unwrap();
    let updated = host.install_into(&s, "shop").unwrap();
    assert_eq!(updated.did, [format!("installed {}", dest.display())]);
}

#[test]
fn without_rights_nothing_is_written_and_the_root_command_is_said() {
    let (t, host) = deployed();
    let root = t.path().join("host");
    dirs(&root, &["etc/init.d", "etc/rc2.d"]);
    let mut s = system(&root);
    s.update_rc_d = Some("/usr/sbin/update-rc.d".into());
    s.euid = 1000;
    let e = host.install_into(&s, "shop").unwrap_err();
    let HostError::Runtime(inner) = &e else { panic!("{e}") };
    assert!(matches!(**inner, RuntimeError::Install(InstallError::NoRights { .. })), "{e}");
    let text = e.to_string();
    assert!(text.contains("it needs root; this runs as uid 1000"), "{text}");
    assert!(text.contains("nothing was written"), "{text}");
    let script = host.root().join(".ferry/init.d/ferry-shop");
    assert!(
        text.ends_with(&format!(
            "Run as root on the host: sudo cp {} {}/etc/init.d/ferry-shop && sudo update-rc.d ferry-shop defaults",
            script.display(),
            root.display()
        )),
        "{text}"
    );
    assert_eq!(fs::read_dir(root.join("etc/init.d")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(root.join("etc/rc2.d")).unwrap().count(), 0);
}

#[test]
fn a_service_name_that_cannot_name_a_file_is_refused() {
    let (t, host) = deployed();
    for bad in ["", "../x", "a b", "-x", "x;rm"] {
        let e = host.install_into(&system(t.path()), bad).unwrap_err();
        assert!(e.to_string().contains("cannot name an init script"), "{bad}: {e}");
    }
}

#[test]
fn the_unit_runs_supervisord_as_the_owner_of_the_deploy_directory() {
    let (_t, host) = deployed();
    let conf = host.root().join(".ferry/supervisord.conf");
    let unit = host.systemd_unit("shop", &conf);
    let root = host.root().display();
    for line in [
        "Type=forking".to_owned(),
        format!("PIDFile={root}/.ferry/supervisord.pid"),
        format!("ExecStart=/usr/bin/supervisord -c {}", conf.display()),
        format!("ExecStop=/usr/bin/supervisorctl -c {} shutdown", conf.display()),
        format!("ConditionPathExists={root}/current"),
        "WantedBy=multi-user.target".to_owned(),
    ] {
        assert!(unit.lines().any(|l| l == line), "no {line:?} in:\n{unit}");
    }
    let uid = fs::metadata(host.root()).unwrap().uid();
    assert_eq!(unit.contains("\nUser="), uid != 0, "{unit}");
    std::os::unix::fs::chown(host.root(), Some(1000), Some(1001)).unwrap();
    let unit = host.systemd_unit("shop", &conf);
    assert!(unit.contains("\nUser=1000\nGroup=1001\n"), "{unit}");
}

#[test]
fn the_init_script_has_an_lsb_header_and_the_deploy_directory_quoted() {
    let t = tempfile::tempdir().unwrap();
    let host = Host::new(t.path().join("it's here"));
    let script = host.init_script("shop");
    assert!(script.starts_with("#!/bin/sh\n### BEGIN INIT INFO\n# Provides:          ferry-shop\n"), "{script}");
    assert!(script.contains("### END INIT INFO"));
    assert!(script.contains("# Default-Start:     2 3 4 5\n# Default-Stop:      0 1 6\n"));
    let quoted = format!("DIR='{}/it'\\''s here'\n", t.path().display());
    assert!(script.contains(&quoted), "{quoted} not in:\n{script}");
    for placeholder in ["@SERVICE@", "@DIR@", "@QDIR@"] {
        assert!(!script.contains(placeholder), "{placeholder} is left:\n{script}");
    }
    // sh reads it.
    let dir = t.path().join("check");
    fs::write(&dir, &script).unwrap();
    let out = std::process::Command::new("sh").arg("-n").arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The systemd steps, against a stand-in `systemctl` that records its
/// calls and answers `is-enabled` from what it recorded (systemd itself
/// does not run where the suite runs).
#[test]
fn under_systemd_the_unit_is_copied_reloaded_and_enabled_once() {
    let (t, host) = deployed();
    let root = t.path().join("host");
    dirs(&root, &["run/systemd/system", "etc/systemd/system"]);
    let calls = t.path().join("calls");
    let stand_in = t.path().join("systemctl");
    fs::write(
        &stand_in,
        format!(
            "#!/bin/sh\necho \"$*\" >> {0}\ncase \"$1\" in\n  is-enabled) grep -q '^enable ' {0} ;;\n  is-active) exit 3 ;;\nesac\n",
            calls.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut s = system(&root);
    s.systemctl = Some(stand_in);
    let installed = host.install_into(&s, "shop").unwrap();
    let dest = root.join("etc/systemd/system/ferry-shop.service");
    assert_eq!(installed.init, Init::Systemd);
    assert_eq!(
        installed.did,
        [
            format!("installed {}", dest.display()),
            "ran systemctl daemon-reload".to_owned(),
            "enabled at boot: systemctl enable ferry-shop".to_owned()
        ]
    );
    assert_eq!(fs::read(&dest).unwrap(), fs::read(host.root().join(".ferry/ferry-shop.service")).unwrap());
    assert_eq!(fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o644);
    assert_eq!(installed.now, Now::Stopped);
    assert!(installed.now_line("shop").contains("`systemctl start ferry-shop`"));
    let again = host.install_into(&s, "shop").unwrap();
    assert!(again.did.is_empty(), "{:?}", again.did);
    let calls = fs::read_to_string(&calls).unwrap();
    assert_eq!(calls.lines().filter(|l| *l == "enable ferry-shop").count(), 1, "{calls}");
    assert_eq!(calls.lines().filter(|l| *l == "daemon-reload").count(), 1, "{calls}");
}

#[test]
fn json_names_the_init_systems_and_enablers_as_the_report_does() {
    for (init, name) in [(Init::Systemd, "systemd"), (Init::InitD, "init.d")] {
        assert_eq!(serde_json::to_value(init).unwrap(), name);
        assert_eq!(init.to_string(), name);
    }
    for (enabler, name) in [
        (Enabler::Systemctl, "systemctl"),
        (Enabler::UpdateRcD, "update-rc.d"),
        (Enabler::Chkconfig, "chkconfig"),
        (Enabler::RcLinks, "rc-links"),
    ] {
        assert_eq!(serde_json::to_value(enabler).unwrap(), name);
    }
}

#[test]
fn a_script_of_another_deploy_directory_under_the_same_name_is_left_alone() {
    let (t, host) = deployed();
    let root = t.path().join("host");
    dirs(&root, &["etc/init.d", "etc/rc2.d"]);
    let other = Host::new(t.path().join("srv/shop-blue"));
    let dest = root.join("etc/init.d/ferry-shop");
    fs::write(&dest, other.init_script("shop")).unwrap();
    let e = host.install_into(&system(&root), "shop").unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("{} is there already, and is not for {};", dest.display(), host.root().display())),
        "{text}"
    );
    assert!(text.contains("deploy this copy under another service name"), "{text}");
    assert_eq!(fs::read_to_string(&dest).unwrap(), other.init_script("shop"));
    assert_eq!(fs::read_dir(root.join("etc/rc2.d")).unwrap().count(), 0);
}
