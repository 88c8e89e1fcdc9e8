//! Hosts pull over HTTPS (`fetch = "store"` with an `https://` endpoint):
//! a real TLS terminator (Debian's HAProxy) in front of the S3 test server,
//! with a CA and a server certificate made at test time. The controller
//! trusts the CA through `[store] ca_file`; each test host trusts it, or
//! not, through its own `/etc` (the CA appended to its
//! `/etc/ssl/certs/ca-certificates.crt`, the bundle curl and
//! rustls-native-certs read on Debian). A host that does not trust it is
//! pushed the bytes and its report says why.

use fs_err as fs;

use crate::kit::{ferry_cmd, run, sample_project, Project, Run};
use crate::s3kit::{S3Server, TestCa, TlsFront};
use crate::testhosts::{Etc, TestHosts};

fn ferry_s3(p: &Project, s3: &S3Server, args: &[&str]) -> Run {
    run(ferry_cmd().args(args).arg("--store").arg(p.store.path()).arg("-c").arg(p.path("ferry.toml")).envs(s3.env()))
}

/// The sample project with a `[store]` at `endpoint` (plus `store_extra`)
/// and an ssh stage `prod` over `hosts` that fetches from it, the agent
/// uploaded (the small one, as a real fleet gets it).
fn tls_project(hosts: &TestHosts, s3: &S3Server, endpoint: &str, store_extra: &str) -> Project {
    let p = sample_project();
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    let section = s3.store_section_via("shop", endpoint);
    let stage = hosts.ssh_stage("prod", "env = \"staging\"\nfetch = \"store\"\n");
    p.write("ferry.toml", format!("{toml}\n{section}{store_extra}\n[deploy]\ndeploy_to = \"/srv/shop\"\n\n{stage}"));
    p
}

/// Appends the CA to host `i`'s own trust store (its private `/etc`).
fn trust(hosts: &TestHosts, i: usize, ca: &TestCa) {
    let out = hosts.ssh(i, &format!("printf '%s\\n' '{}' >> /etc/ssl/certs/ca-certificates.crt", ca.ca_pem.trim()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn hosts_fetch_over_https_trusting_their_own_store_and_one_without_the_ca_is_pushed_the_bytes() {
    let hosts = TestHosts::start_with_etc(3, Etc::Private);
    let s3 = S3Server::start_on(hosts.gateway.into());
    let ca = TestCa::for_ip(hosts.gateway.into());
    let front = TlsFront::start(&s3, &ca);
    // Hosts 1 and 2 trust the CA; host 3 has only the system's CAs.
    trust(&hosts, 0, &ca);
    trust(&hosts, 1, &ca);
    let p = tls_project(&hosts, &s3, &front.endpoint, &format!("ca_file = \"{}\"\n", ca.ca_file.display()));
    let v1 = ferry_s3(&p, &s3, &["build", "--quiet", "--version", "v1"]).ok().stdout.trim().to_owned();
    let report = ferry_s3(&p, &s3, &["push", "prod", "--json"]).ok().json();
    let bundle = fs::metadata(p.store.path().join(format!("bundles/{v1}.tar.zst"))).unwrap().len();
    let rows = report["hosts"].as_array().unwrap();
    for h in &rows[..2] {
        assert_eq!(h["result"], "ok", "{h}");
        assert_eq!(h["bytes"], 0, "the controller pushed bytes to a host that trusts the CA: {h}");
        assert_eq!(h["fetched"], bundle, "{h}");
        // Its curl trusts what it trusts: the agent came over HTTPS too.
        assert!(h["notes"].to_string().contains("the agent came from the store (curl on the host)"), "{h}");
    }
    let untrusting = &rows[2];
    let notes = untrusting["notes"].to_string();
    assert!(notes.contains("the store's TLS certificate is not trusted by this host"), "{untrusting}");
    assert!(notes.contains("UnknownIssuer"), "{untrusting}");
    assert!(notes.contains("update-ca-certificates"), "{untrusting}");
    assert!(notes.contains("pushed the bundle instead"), "{untrusting}");
    assert!(notes.contains("curl: (60) SSL certificate problem"), "{untrusting}");
    assert!(notes.contains("sent it over SSH"), "{untrusting}");
    assert!(!notes.contains("X-Amz-Signature"), "the report shows the signed URL: {untrusting}");
    assert_eq!(untrusting["bytes"], bundle, "{untrusting}");
    assert!(untrusting.get("fetched").is_none(), "{untrusting}");
    eprintln!("a host without the CA: {notes}");
    crate::s3pull::end_state(&hosts, &v1, &[&v1]);
    // The bundle went through the TLS front: it is in the store.
    assert!(s3.keys().contains(&format!("shop/bundles/{v1}.tar.zst")), "{:?}", s3.keys());

    // The next release: a delta, fetched over HTTPS by the two, pushed to the third.
    p.write("app/main.py", "print('shop v2')\n");
    let v2 = ferry_s3(&p, &s3, &["build", "--quiet", "--version", "v2"]).ok().stdout.trim().to_owned();
    let report = ferry_s3(&p, &s3, &["push", "prod", "--json"]).ok().json();
    let delta = fs::metadata(p.store.path().join(format!("deltas/{v1}..{v2}"))).unwrap().len();
    let rows = report["hosts"].as_array().unwrap();
    for h in &rows[..2] {
        assert_eq!((h["bytes"].as_u64(), h["fetched"].as_u64()), (Some(0), Some(delta)), "{h}");
    }
    assert_eq!(rows[2]["bytes"], delta, "{}", rows[2]);
    assert!(rows[2]["notes"].to_string().contains("not trusted by this host"), "{}", rows[2]);
    crate::s3pull::end_state(&hosts, &v2, &[&v1, &v2]);
}

#[test]
fn a_controller_without_the_ca_refuses_the_store_and_a_ca_file_that_is_not_pem_is_refused_at_its_line() {
    let s3 = S3Server::start();
    let ca = TestCa::for_ip(s3.addr);
    let front = TlsFront::start(&s3, &ca);
    let p = sample_project();
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    // Without ca_file: this machine's CAs do not include the test CA.
    p.write("ferry.toml", format!("{toml}\n{}", s3.store_section_via("shop", &front.endpoint)));
    let out = ferry_s3(&p, &s3, &["build", "--quiet", "--publish"]);
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.to_lowercase().contains("certificate"), "{}", out.stderr);
    assert!(s3.keys().is_empty(), "{:?}", s3.keys());
    // With it: published through the TLS front.
    p.write(
        "ferry.toml",
        format!("{toml}\n{}ca_file = \"{}\"\n", s3.store_section_via("shop", &front.endpoint), ca.ca_file.display()),
    );
    let id = ferry_s3(&p, &s3, &["build", "--quiet", "--publish"]).ok().stdout.trim().to_owned();
    assert!(s3.keys().contains(&format!("shop/bundles/{id}.tar.zst")), "{:?}", s3.keys());
    // A ca_file that holds no certificate: refused where it is said.
    p.write("not-a-ca.pem", "hello\n");
    let text = format!("{toml}\n{}ca_file = \"not-a-ca.pem\"\n", s3.store_section_via("shop", &front.endpoint));
    p.write("ferry.toml", &text);
    let line = text.lines().position(|l| l.starts_with("ca_file")).unwrap() + 1;
    let err = ferry_s3(&p, &s3, &["bundles"]).fails(2);
    assert!(err.contains(&format!("ferry.toml:{line}:11: [store] ca_file: ")), "{err}");
    assert!(err.contains("not-a-ca.pem holds no PEM certificate (-----BEGIN CERTIFICATE-----)"), "{err}");
}
