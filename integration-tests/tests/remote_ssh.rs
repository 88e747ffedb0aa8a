//! Remote templates through a real sshd: the throwaway one `.ci/sshd`
//! starts on 127.0.0.1 (`bash .ci/test` starts it and sets
//! `FORK_TEST_SSH_CONFIG` to an ssh_config whose host `fork-test` reaches
//! it, with strict host-key checking against a throwaway `known_hosts`).
//! Without that variable every test here fails and says how to run them:
//! they never pass silently.
//!
//! Both connectors: `ssh` itself as a command (`CommandConnector`), and
//! the `openssh` crate's ControlMaster (`SshConnector`). The other host is
//! this machine, so the same binary is there; the workers run under sshd.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;
use std::time::Duration;

use fork_core::Template;
use fork_core::remote::{CommandConnector, Connector, SshConnector};
use fork_core::testing::wait_exit;
use fork_rpc::RpcWorker;
use integration_tests::remote::{CALC, CalcClient, SHOUT, is_forwarded};
use integration_tests::{Failed, Scratch, block_on, bounded, ensure, fail, parent_of, state_of};
use tarpc::context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The ssh_config of the throwaway sshd, or why the test cannot run.
fn ssh_config() -> Result<String, Failed> {
    std::env::var("FORK_TEST_SSH_CONFIG").map_err(|_| {
        "FORK_TEST_SSH_CONFIG is not set: run the suite with `bash .ci/test`, which starts \
         the throwaway sshd these tests log in to (.ci/sshd)"
            .into()
    })
}

/// `ssh -F CONFIG fork-test`, as a command connector.
fn ssh_command() -> Result<CommandConnector, Failed> {
    // ANCHOR: command
    let ssh = CommandConnector::new("ssh")
        .args(["-F".to_string(), ssh_config()?, "fork-test".to_string()])
        .shell_line(true); // ssh hands the command line to a shell
    // ANCHOR_END: command
    Ok(ssh)
}

/// The command names of `pid`'s ancestors, nearest first.
fn ancestors(mut pid: u32) -> Vec<String> {
    let mut names = Vec::new();
    while let Some(parent) = parent_of(pid) {
        if parent <= 1 {
            break;
        }
        let comm = std::fs::read_to_string(format!("/proc/{parent}/comm")).unwrap_or_default();
        names.push(comm.trim().to_string());
        pid = parent;
    }
    names
}

/// Fails unless `pid` runs under sshd (one of its ancestors is).
fn under_sshd(pid: u32) -> Result<(), Failed> {
    let up = ancestors(pid);
    ensure!(
        up.iter().any(|name| name == "sshd"),
        "the remote template runs under sshd: its ancestors are {up:?}"
    );
    Ok(())
}

/// Through `ssh` as a command: the template runs under sshd, forks a
/// worker there, the worker's bytes come back, and its exit status.
fn a_template_over_ssh_forks_its_workers_there() -> Result<(), Failed> {
    block_on(bounded(async {
        // ANCHOR: start
        let template = Template::remote(ssh_command()?)
            .start()
            .await
            .map_err(fail)?;
        // ANCHOR_END: start
        under_sshd(template.id())?;
        let mut worker = template.fork().arg(&7i32).run(&SHOUT).await.map_err(fail)?;
        ensure!(
            parent_of(worker.id()) == Some(template.id()),
            "the worker is the remote template's child"
        );
        let mut stream = worker.take_stream().ok_or("no stream")?;
        stream.write_all(b"over ssh").await.map_err(fail)?;
        let mut reply = [0u8; 8];
        stream.read_exact(&mut reply).await.map_err(fail)?;
        ensure!(&reply == b"OVER SSH", "reply {reply:?}");
        drop(stream);
        let status = worker.wait().await.map_err(fail)?;
        ensure!(status.code() == Some(7), "exit status {status:?}");
        let pid = template.id();
        let status = template.shutdown().await.map_err(fail)?;
        ensure!(status.success(), "the remote side ended with {status:?}");
        ensure!(
            tokio::task::spawn_blocking(move || wait_exit(pid, Duration::from_secs(2)))
                .await
                .map_err(fail)?
                .map_err(fail)?,
            "the remote template {pid} is gone after the shutdown"
        );
        Ok(())
    }))
}

/// Through the `openssh` crate (one ControlMaster for two templates): a
/// typed fork-rpc client over a remote worker, unchanged, one call and 200
/// in flight.
fn rpc_over_ssh_through_one_control_master() -> Result<(), Failed> {
    block_on(bounded(async {
        // ANCHOR: openssh
        let ssh = Arc::new(SshConnector::new("fork-test").config_file(ssh_config()?));
        let first = Template::remote(ssh.clone()).start().await.map_err(fail)?;
        let second = Template::remote(ssh).start().await.map_err(fail)?;
        // ANCHOR_END: openssh
        ensure!(first.id() != second.id(), "two templates");
        for template in [&first, &second] {
            // Each worker's stream is a connection of its own, forwarded
            // by the ControlMaster.
            let mut worker = template.fork().arg(&7i32).run(&SHOUT).await.map_err(fail)?;
            let stream = worker.take_stream().ok_or("no stream")?;
            ensure!(
                is_forwarded(&stream)?,
                "the worker's stream is not a forwarded connection"
            );
            drop(stream);
            ensure!(
                worker.wait().await.map_err(fail)?.code() == Some(7),
                "shout"
            );
            let (client, mut worker) = RpcWorker::builder(&mut template.fork(), &CALC)
                .spawn()
                .await
                .map_err(fail)?;
            let client = CalcClient::from(client);
            let pid = client.pid(context::current()).await.map_err(fail)?;
            ensure!(pid == worker.id(), "answered by the worker {pid}");
            let calls = (0..200i64).map(|i| {
                let client = client.clone();
                async move { client.add(context::current(), i, 1).await }
            });
            let sums = futures::future::try_join_all(calls).await.map_err(fail)?;
            ensure!(sums == (1..=200).collect::<Vec<i64>>(), "200 sums in order");
            drop(client);
            let status = worker.wait().await.map_err(fail)?;
            ensure!(status.success(), "the worker closed cleanly: {status:?}");
        }
        for template in [first, second] {
            let status = template.shutdown().await.map_err(fail)?;
            ensure!(status.success(), "the remote side ended with {status:?}");
        }
        Ok(())
    }))
}

/// The first start (through the `openssh` crate) uploads this binary into
/// a directory over the ssh connection, and the remote side runs that
/// file, under sshd; the second (through `ssh` as a command) finds it and
/// sends nothing (the file is untouched).
fn an_upload_over_ssh_happens_once() -> Result<(), Failed> {
    block_on(bounded(async {
        let scratch = Scratch::new("upload-ssh");
        let dir = scratch.path().join("bin");
        let target = dir.join(integration_tests::upload_name()?);
        let connectors: [(&str, Box<dyn Connector>); 2] = [
            (
                "SshConnector",
                Box::new(SshConnector::new("fork-test").config_file(ssh_config()?)),
            ),
            ("ssh as a command", Box::new(ssh_command()?)),
        ];
        let mut first = None;
        for (start, connector) in connectors {
            let template = Template::remote(connector)
                .upload_to(&dir)
                .start()
                .await
                .map_err(fail)?;
            let agent = parent_of(template.id()).ok_or("no remote side")?;
            let exe = std::fs::read_link(format!("/proc/{agent}/exe")).map_err(fail)?;
            ensure!(exe == target, "{start}: the remote side runs {exe:?}");
            let up = ancestors(template.id());
            ensure!(
                up.iter().any(|name| name == "sshd"),
                "{start}: the remote template runs under sshd: {up:?}"
            );
            let meta = std::fs::metadata(&target).map_err(fail)?;
            ensure!(meta.permissions().mode() & 0o777 == 0o755, "{start}: mode");
            let stamp = (
                meta.ino(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.ctime_nsec(),
            );
            match first {
                None => {
                    let here = std::fs::read("/proc/self/exe").map_err(fail)?;
                    ensure!(
                        std::fs::read(&target).map_err(fail)? == here,
                        "the uploaded file is this binary"
                    );
                    first = Some(stamp);
                }
                Some(was) => ensure!(stamp == was, "the second start uploaded again"),
            }
            let mut worker = template.fork().arg(&7i32).run(&SHOUT).await.map_err(fail)?;
            let mut stream = worker.take_stream().ok_or("no stream")?;
            stream.write_all(b"uploaded").await.map_err(fail)?;
            let mut reply = [0u8; 8];
            stream.read_exact(&mut reply).await.map_err(fail)?;
            ensure!(&reply == b"UPLOADED", "{start}: reply {reply:?}");
            drop(stream);
            ensure!(
                worker.wait().await.map_err(fail)?.code() == Some(7),
                "{start}: worker"
            );
            let status = template.shutdown().await.map_err(fail)?;
            ensure!(
                status.success(),
                "{start}: the remote side ended with {status:?}"
            );
        }
        Ok(())
    }))
}

/// The parent killed with `SIGKILL`: the ssh client it started sees its
/// input end, so the remote side, its template and the workers (which
/// ignore EOF: the template kills them) are all gone within 2 s.
fn no_survivors_over_ssh_when_the_parent_is_killed() -> Result<(), Failed> {
    no_survivors_of_a_killed_parent("ssh", Duration::from_secs(2))
}

/// The same through `SshConnector`, whose ControlMaster carries the
/// workers' streams as forwarded connections: nothing remote survives the
/// parent, and the ControlMaster here ends once idle for its 5 s.
fn no_survivors_over_forwarded_ssh_when_the_parent_is_killed() -> Result<(), Failed> {
    no_survivors_of_a_killed_parent("openssh", Duration::from_secs(7))
}

/// The `remote-host` helper, connecting through `connector` (`ssh` or
/// `openssh`), killed with `SIGKILL`: the remote side it started, its
/// template (under sshd) and two workers are gone within 2 s, and the ssh
/// processes it started within `ssh_limit`.
fn no_survivors_of_a_killed_parent(connector: &str, ssh_limit: Duration) -> Result<(), Failed> {
    let config = ssh_config()?;
    integration_tests::killed_host_leaves_nothing(
        env!("CARGO_BIN_EXE_remote-host"),
        &[connector, &config],
        4,
        Duration::from_secs(2),
        |pids| under_sshd(pids[1]),
    )?;
    ssh_clients_end(ssh_limit)
}

/// The ssh processes the killed host started were re-parented to this
/// process (subreaper): each ends within `limit` once the remote side
/// has; reaps them.
fn ssh_clients_end(limit: Duration) -> Result<(), Failed> {
    for child in integration_tests::children_of(std::process::id()).map_err(fail)? {
        if std::fs::read_to_string(format!("/proc/{child}/comm")).is_ok_and(|c| c.trim() == "ssh") {
            ensure!(
                wait_exit(child, limit).map_err(fail)?,
                "the ssh process {child} did not end within {limit:?}"
            );
            let _ = fork_core::testing::reap(child);
            ensure!(state_of(child).is_none(), "the ssh client {child} reaped");
        }
    }
    Ok(())
}

fn main() {
    fork_core::init();
    integration_tests::run_serially(&[
        (
            "a_template_over_ssh_forks_its_workers_there",
            a_template_over_ssh_forks_its_workers_there,
        ),
        (
            "rpc_over_ssh_through_one_control_master",
            rpc_over_ssh_through_one_control_master,
        ),
        (
            "an_upload_over_ssh_happens_once",
            an_upload_over_ssh_happens_once,
        ),
        (
            "no_survivors_over_forwarded_ssh_when_the_parent_is_killed",
            no_survivors_over_forwarded_ssh_when_the_parent_is_killed,
        ),
        (
            "no_survivors_over_ssh_when_the_parent_is_killed",
            no_survivors_over_ssh_when_the_parent_is_killed,
        ),
    ])
}
