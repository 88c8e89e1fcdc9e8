//! The remote store (`[store] url = "s3://…"`) against a real S3 server
//! (s3kit): publish, listing and names resolved remotely, the local cache,
//! two publishers at once, and what bad credentials or a missing bucket say.

use std::process::Command;
use std::time::Duration;

use ferry_builder::remote::{Remote, RemoteSpec};
use fs_err as fs;

use crate::kit::{ferry_cmd, run, sample_project, Project, Run};
use crate::s3kit::{S3Server, REGION};

/// The sample project, its ferry.toml using `s3` under `prefix`.
fn project_on(s3: &S3Server, prefix: &str) -> Project {
    let p = sample_project();
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write("ferry.toml", format!("{toml}\n{}", s3.store_section(prefix)));
    p
}

/// `ferry ARGS` for project `p` with the server's credentials in the environment.
fn ferry_s3(p: &Project, s3: &S3Server, args: &[&str]) -> Run {
    run(ferry_cmd().args(args).arg("--store").arg(p.store.path()).arg("-c").arg(p.path("ferry.toml")).envs(s3.env()))
}

fn spec(s3: &S3Server, prefix: &str) -> RemoteSpec {
    RemoteSpec {
        bucket: s3.bucket.clone(),
        prefix: prefix.into(),
        endpoint: Some(s3.endpoint.clone()),
        region: Some(REGION.into()),
        path_style: true,
        profile: None,
        ca_file: None,
    }
}

/// A [`Remote`] of the server, with its keys set for this process (the
/// tests that call this use the same keys, so setting them is idempotent).
fn remote(s3: &S3Server, prefix: &str) -> Remote {
    for (k, v) in s3.env() {
        std::env::set_var(k, v);
    }
    Remote::open(&spec(s3, prefix)).unwrap()
}

#[test]
fn a_published_release_is_content_addressed_listed_and_fetched_by_another_controller() {
    let s3 = S3Server::start();
    let p = project_on(&s3, "ci/shop");
    let built = ferry_s3(&p, &s3, &["build", "--version", "v1", "--publish", "--json"]).ok().json();
    let id = built["id"].as_str().unwrap().to_owned();
    assert_eq!(built["published"]["store"], "s3://ferry-test/ci/shop", "{built}");
    let keys = s3.keys();
    assert_eq!(keys, [format!("ci/shop/bundles/{id}.json"), format!("ci/shop/bundles/{id}.tar.zst")]);
    let local = fs::read(p.store.path().join(format!("bundles/{id}.tar.zst"))).unwrap();
    assert_eq!(fs::read(s3.object_path(&format!("ci/shop/bundles/{id}.tar.zst"))).unwrap(), local);

    // Served as immutable.
    let url = remote(&s3, "ci/shop").presign_get(&format!("bundles/{id}.tar.zst"), Duration::from_secs(60)).unwrap();
    let out = Command::new("curl").args(["-s", "-D", "-", "-o", "/dev/null", &url]).output().unwrap();
    let headers = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(headers.starts_with("http/1.1 200"), "{headers}");
    assert!(headers.contains("cache-control: public, max-age=31536000, immutable"), "{headers}");

    // Publishing again finds everything there: nothing uploaded, success;
    // a signature beside the bundle (the signing hook) goes with it.
    let sig = p.store.path().join(format!("signatures/{id}.minisig"));
    fs::create_dir_all(sig.parent().unwrap()).unwrap();
    fs::write(&sig, "untrusted comment: test\nRWQ...\n").unwrap();
    let again = ferry_s3(&p, &s3, &["publish", "v1", "--json"]).ok().json();
    for o in again["objects"].as_array().unwrap() {
        assert_eq!(o["existed"], o["key"] != format!("signatures/{id}.minisig").as_str(), "{again}");
    }
    assert_eq!(fs::read(s3.object_path(&format!("ci/shop/signatures/{id}.minisig"))).unwrap(), fs::read(&sig).unwrap());

    // Another controller, with an empty local store, lists it and resolves
    // an id prefix and the version label against the remote; the first use
    // fetches the bundle into its local store (the cache).
    let other = project_on(&s3, "ci/shop");
    let listed = ferry_s3(&other, &s3, &["bundles", "--json"]).ok().json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["version"], "v1");
    assert!(!other.store.path().join(format!("bundles/{id}.tar.zst")).exists());
    let shown = ferry_s3(&other, &s3, &["inspect", &id[..8], "--json"]).ok().json();
    assert_eq!(shown["id"], id.as_str(), "{shown}");
    assert_eq!(fs::read(other.store.path().join(format!("bundles/{id}.tar.zst"))).unwrap(), local);
    assert_eq!(fs::read(other.store.path().join(format!("signatures/{id}.minisig"))).unwrap(), fs::read(&sig).unwrap());
    ferry_s3(&other, &s3, &["verify", "v1"]).ok();
    // Listed once, though now in both.
    assert_eq!(ferry_s3(&other, &s3, &["bundles", "--json"]).ok().json().as_array().unwrap().len(), 1);

    // A second prefix is a store of its own.
    let elsewhere = project_on(&s3, "other");
    assert_eq!(ferry_s3(&elsewhere, &s3, &["bundles", "--json"]).ok().json(), serde_json::json!([]));
}

#[test]
fn two_publishers_of_one_release_at_once_both_succeed_and_other_bytes_under_its_key_are_refused() {
    let s3 = S3Server::start();
    for round in 0..3 {
        let prefix = format!("race{round}");
        let (a, b) = (project_on(&s3, &prefix), project_on(&s3, &prefix));
        // Two CI jobs: the same tree, built on each, the same id and bytes.
        let ida = ferry_s3(&a, &s3, &["build", "--quiet", "--version", "v1"]).ok().stdout;
        let idb = ferry_s3(&b, &s3, &["build", "--quiet", "--version", "v1"]).ok().stdout;
        assert_eq!(ida, idb);
        let id = ida.trim().to_owned();
        let spawn = |p: &Project| {
            ferry_cmd()
                .args(["publish", &id, "--json", "--store"])
                .arg(p.store.path())
                .arg("-c")
                .arg(p.path("ferry.toml"))
                .envs(s3.env())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (ca, cb) = (spawn(&a), spawn(&b));
        let (oa, ob) = (ca.wait_with_output().unwrap(), cb.wait_with_output().unwrap());
        for o in [&oa, &ob] {
            assert!(o.status.success(), "a publisher failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        let bundle_key = format!("bundles/{id}.tar.zst");
        let created: usize = [&oa, &ob]
            .iter()
            .map(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap())
            .filter(|j| {
                j["objects"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|o| o["key"] == bundle_key.as_str() && o["existed"] == false)
            })
            .count();
        assert!(created >= 1, "no publisher wrote the bundle");
        assert_eq!(
            fs::read(s3.object_path(&format!("{prefix}/{bundle_key}"))).unwrap(),
            fs::read(a.store.path().join(&bundle_key)).unwrap()
        );
    }

    // Other bytes under a release's key: refused, saying so; the object stays.
    let p = project_on(&s3, "damaged");
    let id = ferry_s3(&p, &s3, &["build", "--quiet", "--version", "v1"]).ok().stdout.trim().to_owned();
    let key = format!("damaged/bundles/{id}.tar.zst");
    fs::create_dir_all(s3.object_path(&key).parent().unwrap()).unwrap();
    fs::write(s3.object_path(&key), "not the bundle").unwrap();
    let err = ferry_s3(&p, &s3, &["publish", &id]).fails(2);
    assert!(
        err.contains(&format!("{key} is already in the store s3://ferry-test/damaged with other content")),
        "{err}"
    );
    assert!(err.contains("objects there never change"), "{err}");
    assert_eq!(fs::read_to_string(s3.object_path(&key)).unwrap(), "not the bundle");
}

#[test]
fn bad_credentials_a_missing_bucket_and_no_credentials_say_what_and_what_to_do() {
    let mut s3 = S3Server::start();
    let p = project_on(&s3, "shop");
    let id = ferry_s3(&p, &s3, &["build", "--quiet"]).ok().stdout.trim().to_owned();
    let keys = s3.env();
    let with = |env: &[(&str, &str)]| {
        run(ferry_cmd()
            .args(["publish", &id, "--store"])
            .arg(p.store.path())
            .arg("-c")
            .arg(p.path("ferry.toml"))
            .envs(keys.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(env.iter().copied()))
    };

    let err = with(&[("AWS_SECRET_ACCESS_KEY", "wrong")]).fails(2);
    assert!(err.contains("the store s3://ferry-test/shop refused the credentials from the environment"), "{err}");
    assert!(err.contains("check the keys"), "{err}");
    assert!(s3.keys().is_empty(), "{:?}", s3.keys());

    let err = run(ferry_cmd()
        .args(["publish", &id, "--store"])
        .arg(p.store.path())
        .arg("-c")
        .arg(p.path("ferry.toml"))
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
        .env("AWS_CONFIG_FILE", "/nonexistent/config"))
    .fails(2);
    assert!(err.contains("no credentials for the store s3://ferry-test/shop: set AWS_ACCESS_KEY_ID"), "{err}");
    assert!(err.contains("/nonexistent/credentials"), "{err}");

    // Keys from a profile of the shared files, as the AWS tools read them.
    let dir = crate::kit::tempdir();
    let creds = dir.path().join("credentials");
    fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = nope\naws_secret_access_key = nope\n\n[ci]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            crate::s3kit::ACCESS_KEY,
            crate::s3kit::SECRET_KEY
        ),
    )
    .unwrap();
    let ok = run(ferry_cmd()
        .args(["publish", &id, "--store"])
        .arg(p.store.path())
        .arg("-c")
        .arg(p.path("ferry.toml"))
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_PROFILE", "ci")
        .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
        .env("AWS_CONFIG_FILE", "/nonexistent/config"));
    ok.ok();
    assert!(s3.keys().contains(&format!("shop/bundles/{id}.tar.zst")));

    // A bucket that is not there.
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap().replace("s3://ferry-test/", "s3://no-such-bucket/");
    p.write("ferry.toml", toml);
    let err = with(&[]).fails(2);
    assert!(err.contains(&format!("the bucket \"no-such-bucket\" does not exist at {}", s3.endpoint)), "{err}");
    assert!(err.contains("create it, or fix [store] url"), "{err}");

    // The store down: said, with where.
    s3.stop();
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap().replace("s3://no-such-bucket/", "s3://ferry-test/");
    p.write("ferry.toml", toml);
    let err = with(&[]).fails(2);
    assert!(err.contains(&format!("the store s3://ferry-test/shop at {}", s3.endpoint)), "{err}");
    // A prefix needs the remote's list too; a whole id built here does not.
    let err = ferry_s3(&p, &s3, &["inspect", &id[..8]]).fails(2);
    assert!(err.contains("listing"), "{err}");
    ferry_s3(&p, &s3, &["inspect", &id]).ok();
}

#[test]
fn a_bad_store_section_is_refused_with_its_line_and_column() {
    let p = sample_project();
    let toml = fs::read_to_string(p.path("ferry.toml")).unwrap();
    p.write("ferry.toml", format!("{toml}\n[store]\nurl = \"s3://Bad_Bucket/x\"\n"));
    let err = p.ferry(["bundles"]).fails(2);
    assert!(err.contains("ferry.toml:9:7: [store] url: bucket \"Bad_Bucket\""), "{err}");
    p.write("ferry.toml", format!("{toml}\n[store]\nurl = \"s3://bucket/x\"\nendpoint = \"minio:9000\"\n"));
    let err = p.ferry(["bundles"]).fails(2);
    assert!(err.contains("[store] endpoint \"minio:9000\" is not an http:// or https:// URL"), "{err}");
    p.write("ferry.toml", format!("{toml}\n[stages.web]\nhosts = [\"fleet/a\"]\nfetch = \"store\"\n"));
    let err = p.ferry(["bundles"]).fails(2);
    assert!(err.contains("fetch = \"store\" needs a remote store: set [store] url"), "{err}");
    // Without a remote, publish says how to get one.
    let p = sample_project();
    let id = crate::kit::build(&p, "v1");
    let err = p.ferry(["publish", &id]).fails(2);
    assert!(err.contains("has no remote: set [store] url = \"s3://BUCKET/PREFIX\" in ferry.toml"), "{err}");
}

#[test]
fn a_presigned_url_reads_one_object_until_it_expires_and_a_tampered_one_is_refused() {
    let s3 = S3Server::start();
    let p = project_on(&s3, "signed");
    let id = ferry_s3(&p, &s3, &["build", "--quiet", "--publish"]).ok().stdout.trim().to_owned();
    let r = remote(&s3, "signed");
    let key = format!("bundles/{id}.tar.zst");
    let get = |url: &str| {
        let out = Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", url]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let url = r.presign_get(&key, Duration::from_secs(60)).unwrap();
    assert!(url.contains("X-Amz-Signature="), "{url}");
    assert!(!url.contains(crate::s3kit::SECRET_KEY));
    assert_eq!(get(&url), "200");
    // Another key under the same signature, or a changed expiry: refused.
    assert_eq!(get(&url.replace(&format!("{id}.tar.zst"), &format!("{id}.json"))), "403");
    assert_eq!(get(&url.replace("X-Amz-Expires=60", "X-Amz-Expires=600")), "403");
    let short = r.presign_get(&key, Duration::from_secs(1)).unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(get(&short), "403", "an expired URL still reads");
}
