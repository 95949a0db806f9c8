//! Hot reload: the registry's transactional semantics on real folders, and
//! the file watcher end to end (real files, the real watcher). Watcher tests
//! poll the registry with generous timeouts; they never assert on timing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskweave::reload::{Registry, ReloadReport};

fn wf(name: &str, description: &str) -> String {
    format!(
        "version: 1\nname: {name}\ndescription: {description}\ntasks:\n  - name: a\n    uses: echo\n  - name: b\n    parents: [a]\n    uses: echo\n"
    )
}

/// Line 8, column 15: `nope` names no task.
const BROKEN: &str =
    "version: 1\nname: hello\ndescription: broken\ntasks:\n  - name: a\n    uses: echo\n  - name: b\n    parents: [nope]\n    uses: echo\n";

fn registry(dir: &Path) -> Arc<Registry> {
    Arc::new(Registry::new(vec![dir.to_path_buf()], Default::default()))
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn version(r: &Registry, name: &str) -> Option<String> {
    r.get(name).map(|w| w.version.clone())
}

fn events(rx: &mut tokio::sync::broadcast::Receiver<ReloadReport>) -> Vec<ReloadReport> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

/// Wait (polling) until `ok` holds; panic with `what` after a generous timeout.
fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    taskweave::backend::conformance::eventually_blocking(what, Duration::from_secs(20), Duration::from_millis(5), || ok().then_some(()))
}

// ---------------------------------------------------------------- registry

#[test]
fn initial_load_serves_every_file() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("a.yaml"), &wf("alpha", "one"));
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    write(&dir.path().join("sub/b.yml"), &wf("beta", "two"));
    write(&dir.path().join("notes.txt"), "not a workflow");
    std::fs::create_dir(dir.path().join(".git")).unwrap();
    write(&dir.path().join(".git/c.yaml"), &wf("hidden", "no"));
    let r = registry(dir.path());
    let report = r.load_all();
    assert_eq!(report.updated, ["alpha", "beta"]);
    assert!(report.removed.is_empty() && report.failed.is_empty());
    assert_eq!(r.names(), ["alpha", "beta"]);
    let status = r.status();
    assert_eq!(status.len(), 2);
    for s in &status {
        assert!(s.last_attempt.ok);
        assert!(s.since.is_some());
        assert_eq!(s.active_version, version(&r, s.workflow.as_deref().unwrap()));
    }
    // Nothing changed: a second load is a no-op.
    assert!(r.load_all().is_noop());
}

#[test]
fn edit_swaps_in_a_new_version_and_runs_in_flight_keep_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.yaml");
    write(&file, &wf("hello", "first"));
    let r = registry(dir.path());
    r.load_all();
    let in_flight = r.get("hello").unwrap();
    let since = r.file_status(&file).unwrap().since.unwrap();
    std::thread::sleep(Duration::from_millis(2));

    write(&file, &wf("hello", "second"));
    let report = r.reload_paths(std::slice::from_ref(&file));
    assert_eq!(report.updated, ["hello"]);
    let now = r.get("hello").unwrap();
    assert_ne!(now.version, in_flight.version);
    assert_eq!(now.description.as_deref(), Some("second"));
    assert_eq!(in_flight.description.as_deref(), Some("first"));
    let status = r.file_status(&file).unwrap();
    assert_eq!(status.active_version.as_deref(), Some(now.version.as_str()));
    assert!(status.since.unwrap() > since);
}

#[test]
fn broken_edit_keeps_the_old_version_serving_until_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.yaml");
    write(&file, &wf("hello", "good"));
    let r = registry(dir.path());
    r.load_all();
    let good = version(&r, "hello").unwrap();
    let since = r.file_status(&file).unwrap().since;

    write(&file, BROKEN);
    let report = r.reload_paths(std::slice::from_ref(&file));
    assert_eq!(report.failed, [file.display().to_string()]);
    assert!(report.updated.is_empty() && report.removed.is_empty());
    assert_eq!(version(&r, "hello").as_deref(), Some(good.as_str()));
    let status = r.file_status(&file).unwrap();
    assert!(!status.last_attempt.ok);
    assert_eq!(status.active_version.as_deref(), Some(good.as_str()));
    assert_eq!(status.since, since);
    let d = status.last_attempt.diagnostics.iter().find(|d| d.is_error()).unwrap();
    assert_eq!((d.code.as_str(), d.span.start.line, d.span.start.column), ("unknown-parent", 8, 15));
    assert_eq!(r.status_of("hello").len(), 1);

    // A broken file that parses not at all keeps serving too.
    write(&file, "version: 1\nname: [unclosed\n");
    let report = r.reload_paths(std::slice::from_ref(&file));
    assert_eq!(report.failed.len(), 1);
    let d = r.file_status(&file).unwrap().last_attempt.diagnostics.remove(0);
    assert_eq!(d.code.as_str(), "parse");
    assert!(d.span.start.line >= 2, "{d:?}");
    assert_eq!(version(&r, "hello").as_deref(), Some(good.as_str()));

    write(&file, &wf("hello", "fixed"));
    let report = r.reload_paths(std::slice::from_ref(&file));
    assert_eq!(report.updated, ["hello"]);
    let status = r.file_status(&file).unwrap();
    assert!(status.last_attempt.ok);
    assert!(status.last_attempt.diagnostics.is_empty());
    assert_eq!(r.get("hello").unwrap().description.as_deref(), Some("fixed"));
}

#[test]
fn delete_removes_the_workflow_for_new_runs_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.yaml");
    write(&file, &wf("hello", "bye"));
    let r = registry(dir.path());
    r.load_all();
    let in_flight = r.get("hello").unwrap();
    std::fs::remove_file(&file).unwrap();
    let report = r.reload_paths(std::slice::from_ref(&file));
    assert_eq!(report.removed, ["hello"]);
    assert!(r.get("hello").is_none());
    assert!(r.status().is_empty());
    assert_eq!(in_flight.tasks.len(), 2);
    assert_eq!(in_flight.description.as_deref(), Some("bye"));
}

#[test]
fn a_deleted_folder_removes_everything_loaded_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("team");
    std::fs::create_dir(&sub).unwrap();
    write(&sub.join("a.yaml"), &wf("alpha", "x"));
    write(&sub.join("b.yaml"), &wf("beta", "x"));
    write(&dir.path().join("c.yaml"), &wf("gamma", "x"));
    let r = registry(dir.path());
    r.load_all();
    std::fs::remove_dir_all(&sub).unwrap();
    let report = r.reload_paths(&[sub]);
    assert_eq!(report.removed, ["alpha", "beta"]);
    assert_eq!(r.names(), ["gamma"]);
}

#[test]
fn a_second_file_claiming_a_name_is_a_duplicate_and_the_first_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("b-first.yaml");
    let second = dir.path().join("a-second.yaml");
    write(&first, &wf("shared", "first"));
    let r = registry(dir.path());
    r.load_all();
    write(&second, &wf("shared", "second"));
    let report = r.reload_paths(std::slice::from_ref(&second));
    assert_eq!(report.failed, [second.display().to_string()]);
    assert!(report.updated.is_empty());
    assert_eq!(r.get("shared").unwrap().description.as_deref(), Some("first"));
    let status = r.file_status(&second).unwrap();
    assert!(!status.last_attempt.ok);
    assert_eq!(status.active_version, None);
    let d = &status.last_attempt.diagnostics[0];
    assert_eq!((d.code.as_str(), d.span.start.line, d.span.start.column), ("duplicate-workflow", 2, 7));
    assert!(d.message.contains("b-first.yaml"), "{}", d.message);
    assert_eq!(r.list()[0].file.as_deref(), Some(first.display().to_string().as_str()));

    // Reloading the newcomer again changes nothing: the first still serves.
    assert_eq!(r.reload_paths(std::slice::from_ref(&second)).failed.len(), 1);
    assert_eq!(r.get("shared").unwrap().description.as_deref(), Some("first"));

    // When the first goes, the newcomer takes over.
    std::fs::remove_file(&first).unwrap();
    let report = r.reload_paths(std::slice::from_ref(&first));
    assert_eq!(report.updated, ["shared"]);
    assert!(report.removed.is_empty() && report.failed.is_empty());
    assert_eq!(r.get("shared").unwrap().description.as_deref(), Some("second"));
    let status = r.file_status(&second).unwrap();
    assert!(status.last_attempt.ok);
    assert!(status.last_attempt.diagnostics.is_empty());
    assert!(status.active_version.is_some() && status.since.is_some());
}

#[test]
fn duplicates_within_one_load_keep_the_first_file_by_path() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("a.yaml"), &wf("shared", "a"));
    write(&dir.path().join("b.yaml"), &wf("shared", "b"));
    let r = registry(dir.path());
    let report = r.load_all();
    assert_eq!(report.updated, ["shared"]);
    assert_eq!(report.failed.len(), 1);
    assert!(report.failed[0].ends_with("b.yaml"));
    assert_eq!(r.get("shared").unwrap().description.as_deref(), Some("a"));
}

#[test]
fn renaming_the_workflow_inside_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.yaml");
    write(&file, &wf("old-name", "x"));
    let r = registry(dir.path());
    r.load_all();
    write(&file, &wf("new-name", "x"));
    let report = r.reload_paths(std::slice::from_ref(&file));
    assert_eq!(report.updated, ["new-name"]);
    assert_eq!(report.removed, ["old-name"]);
    assert_eq!(r.names(), ["new-name"]);
    assert_eq!(r.file_status(&file).unwrap().workflow.as_deref(), Some("new-name"));

    // A rename onto a name another file serves fails; the file keeps serving its old name.
    write(&dir.path().join("other.yaml"), &wf("taken", "y"));
    r.load_all();
    write(&file, &wf("taken", "x"));
    let report = r.reload_paths(std::slice::from_ref(&file));
    assert_eq!(report.failed.len(), 1);
    assert_eq!(r.names(), ["new-name", "taken"]);
    assert_eq!(r.get("taken").unwrap().description.as_deref(), Some("y"));
}

#[test]
fn swapping_names_between_two_files_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
    write(&a, &wf("first", "in a"));
    write(&b, &wf("second", "in b"));
    let r = registry(dir.path());
    r.load_all();
    write(&a, &wf("second", "in a"));
    write(&b, &wf("first", "in b"));
    let report = r.reload_paths(&[a, b]);
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(report.updated, ["first", "second"]);
    assert_eq!(r.get("first").unwrap().description.as_deref(), Some("in b"));
    assert_eq!(r.get("second").unwrap().description.as_deref(), Some("in a"));
}

#[test]
fn fifty_files_at_once_are_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let r = registry(dir.path());
    r.load_all();
    let mut rx = r.subscribe();
    let files: Vec<PathBuf> = (0..50)
        .map(|i| {
            let f = dir.path().join(format!("w{i:02}.yaml"));
            write(&f, &wf(&format!("w{i:02}"), "x"));
            f
        })
        .collect();
    let report = r.reload_paths(&files);
    assert_eq!(report.updated.len(), 50);
    assert_eq!(r.names().len(), 50);
    assert_eq!(events(&mut rx).len(), 1);

    // The same bytes again: no-op, no event.
    assert!(r.reload_paths(&files).is_noop());
    assert!(events(&mut rx).is_empty());
}

#[test]
fn renaming_a_file_keeps_the_workflow_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (dir.path().join("z-old.yaml"), dir.path().join("a-new.yaml"));
    write(&from, &wf("hello", "x"));
    let r = registry(dir.path());
    r.load_all();
    let before = version(&r, "hello").unwrap();
    let since = r.file_status(&from).unwrap().since;
    std::fs::rename(&from, &to).unwrap();
    let report = r.reload_paths(&[from.clone(), to.clone()]);
    assert!(report.is_noop(), "{report:?}");
    assert_eq!(version(&r, "hello").as_deref(), Some(before.as_str()));
    assert_eq!(r.list()[0].file.as_deref(), Some(to.display().to_string().as_str()));
    assert!(r.file_status(&from).is_none());
    let status = r.file_status(&to).unwrap();
    assert!(status.last_attempt.ok);
    assert_eq!(status.since, since, "the version has been serving since before the rename");
}

#[test]
fn an_unreadable_file_keeps_its_last_version() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.yaml");
    write(&file, &wf("hello", "x"));
    let r = registry(dir.path());
    r.load_all();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Permissions do not stop root: read as nobody (the file-system user id
    // is this thread's own, and the threads it starts inherit it).
    let as_root = std::fs::read(&file).is_ok();
    if as_root {
        // SAFETY: setfsuid changes only this thread's file-system user id.
        unsafe { libc::setfsuid(65534) };
    }
    let report = r.reload_paths(std::slice::from_ref(&file));
    if as_root {
        // SAFETY: as above, back to root.
        unsafe { libc::setfsuid(0) };
    }
    assert_eq!(report.failed.len(), 1);
    assert!(r.get("hello").is_some());
    assert!(!r.file_status(&file).unwrap().last_attempt.ok);
}

// ---------------------------------------------------------------- watcher

fn watch(r: &Arc<Registry>) -> taskweave::reload::Watcher {
    taskweave::reload::watch(Arc::clone(r), taskweave::reload::DEFAULT_DEBOUNCE).unwrap()
}

#[test]
fn watcher_follows_create_modify_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let r = registry(dir.path());
    r.load_all();
    let _w = watch(&r);
    let file = dir.path().join("hello.yaml");

    write(&file, &wf("hello", "one"));
    wait_for("the new file to load", || r.get("hello").is_some());
    let first = r.get("hello").unwrap();

    write(&file, &wf("hello", "two"));
    wait_for("the edit to load", || r.get("hello").is_some_and(|w| w.description.as_deref() == Some("two")));
    assert_eq!(first.description.as_deref(), Some("one"));

    std::fs::remove_file(&file).unwrap();
    wait_for("the deleted file to unload", || r.get("hello").is_none());
    assert!(r.status().is_empty());
}

#[test]
fn watcher_follows_an_editors_atomic_save() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.yaml");
    write(&file, &wf("x", "before"));
    let r = registry(dir.path());
    r.load_all();
    let _w = watch(&r);
    for round in 0..3 {
        let tmp = dir.path().join(".x.yaml.tmp");
        let text = format!("after {round}");
        write(&tmp, &wf("x", &text));
        std::fs::rename(&tmp, &file).unwrap();
        wait_for("the saved file to load", || r.get("x").is_some_and(|w| w.description.as_deref() == Some(text.as_str())));
    }
    // The temporary file never became a workflow file of its own.
    assert_eq!(r.status().iter().map(|s| s.path.clone()).collect::<Vec<_>>(), [file.display().to_string()]);
}

#[test]
fn watcher_treats_a_rename_to_a_temp_name_as_a_delete_and_back_as_a_create() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.yaml");
    write(&file, &wf("x", "here"));
    let r = registry(dir.path());
    r.load_all();
    let _w = watch(&r);
    let hidden = dir.path().join(".x.yaml.bak");
    std::fs::rename(&file, &hidden).unwrap();
    wait_for("the renamed-away file to unload", || r.get("x").is_none());
    std::fs::rename(&hidden, &file).unwrap();
    wait_for("the renamed-back file to load", || r.get("x").is_some());
    // A plain rename between workflow names keeps serving.
    let other = dir.path().join("y.yaml");
    std::fs::rename(&file, &other).unwrap();
    wait_for("the workflow to be served from its new file", || {
        r.list().first().and_then(|e| e.file.clone()) == Some(other.display().to_string())
    });
    assert!(r.get("x").is_some());
}

#[test]
fn watcher_keeps_the_old_version_on_a_broken_edit() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.yaml");
    write(&file, &wf("hello", "good"));
    let r = registry(dir.path());
    r.load_all();
    let good = version(&r, "hello").unwrap();
    let _w = watch(&r);
    write(&file, BROKEN);
    // (Under load a reload may catch the file half written first; the next one sees it whole.)
    let at = |s: &taskweave::reload::FileStatus| {
        s.last_attempt.diagnostics.iter().map(|d| (d.code.as_str(), d.span.start.line, d.span.start.column)).collect::<Vec<_>>()
    };
    wait_for("the broken edit to be reported", || {
        r.file_status(&file).is_some_and(|s| !s.last_attempt.ok && at(&s) == [("unknown-parent", 8, 15)])
    });
    assert_eq!(version(&r, "hello").as_deref(), Some(good.as_str()));
    write(&file, &wf("hello", "fixed"));
    wait_for("the fix to load", || r.file_status(&file).is_some_and(|s| s.last_attempt.ok));
    assert_eq!(r.get("hello").unwrap().description.as_deref(), Some("fixed"));
}

#[test]
fn watcher_waits_for_a_folder_created_after_start_and_follows_it_when_deleted_and_recreated() {
    let base = tempfile::tempdir().unwrap();
    let folder = base.path().join("later/workflows");
    let r = registry(&folder);
    assert!(r.load_all().is_noop());
    let _w = watch(&r);

    std::fs::create_dir_all(&folder).unwrap();
    write(&folder.join("a.yaml"), &wf("alpha", "x"));
    wait_for("the file in the new folder to load", || r.get("alpha").is_some());
    // Now watched recursively: later files show up too.
    std::fs::create_dir(folder.join("sub")).unwrap();
    write(&folder.join("sub/b.yaml"), &wf("beta", "x"));
    wait_for("a file in a new subfolder to load", || r.get("beta").is_some());

    std::fs::remove_dir_all(&folder).unwrap();
    wait_for("the deleted folder to unload", || r.names().is_empty());

    std::fs::create_dir_all(&folder).unwrap();
    write(&folder.join("c.yaml"), &wf("gamma", "x"));
    wait_for("the recreated folder to load", || r.get("gamma").is_some());
    write(&folder.join("c.yaml"), &wf("gamma", "edited"));
    wait_for("an edit in the recreated folder to load", || r.get("gamma").is_some_and(|w| w.description.as_deref() == Some("edited")));
}

#[test]
fn watcher_gathers_fifty_files_into_a_few_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let r = registry(dir.path());
    r.load_all();
    let mut rx = r.subscribe();
    let _w = watch(&r);
    // Like a branch switch: many files written back to back.
    for i in 0..50 {
        write(&dir.path().join(format!("w{i:02}.yaml")), &wf(&format!("w{i:02}"), "branch"));
    }
    wait_for("all fifty to load", || r.names().len() == 50);
    let reloads = events(&mut rx);
    assert!(!reloads.is_empty() && reloads.len() <= 3, "{} reloads: {reloads:?}", reloads.len());
    assert_eq!(reloads.iter().map(|e| e.updated.len()).sum::<usize>(), 50);
    assert!(r.status().iter().all(|s| s.last_attempt.ok));

    // And back: all fifty deleted at once.
    for i in 0..50 {
        std::fs::remove_file(dir.path().join(format!("w{i:02}.yaml"))).unwrap();
    }
    wait_for("all fifty to unload", || r.names().is_empty());
    let reloads = events(&mut rx);
    assert!(reloads.len() <= 3, "{} reloads", reloads.len());
}

#[test]
fn watcher_applies_a_branch_switch_as_one_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = |i: usize| dir.path().join(format!("w{i:02}.yaml"));
    for i in 0..30 {
        write(&path(i), &wf(&format!("w{i:02}"), "main"));
    }
    let r = registry(dir.path());
    r.load_all();
    let mut rx = r.subscribe();
    let _w = watch(&r);
    // Ten edited, ten deleted, ten renamed to another name, ten new: like `git checkout other`.
    for i in 0..10 {
        write(&path(i), &wf(&format!("w{i:02}"), "other"));
        std::fs::remove_file(path(i + 10)).unwrap();
        std::fs::rename(path(i + 20), path(i + 40)).unwrap();
        write(&path(i + 30), &wf(&format!("w{:02}", i + 30), "other"));
    }
    let expected: Vec<String> = (0..10).chain(20..40).map(|i| format!("w{i:02}")).collect();
    wait_for("the other branch to serve", || {
        r.names() == expected && (0..10).all(|i| r.get(&format!("w{i:02}")).unwrap().description.as_deref() == Some("other"))
    });
    let reloads = events(&mut rx);
    assert!(!reloads.is_empty() && reloads.len() <= 3, "{} reloads: {reloads:?}", reloads.len());
    assert!(reloads.iter().all(|e| e.failed.is_empty()), "{reloads:?}");
    let removed: usize = reloads.iter().map(|e| e.removed.len()).sum();
    assert_eq!(removed, 10, "only the deleted files' workflows went away: {reloads:?}");
    assert_eq!(r.status().len(), 30);
}

#[test]
fn watcher_ignores_dot_files_other_extensions_and_hidden_folders() {
    let dir = tempfile::tempdir().unwrap();
    let r = registry(dir.path());
    r.load_all();
    let _w = watch(&r);
    write(&dir.path().join(".swap.yaml"), &wf("dot", "x"));
    write(&dir.path().join("readme.md"), "# hi");
    std::fs::create_dir(dir.path().join(".git")).unwrap();
    write(&dir.path().join(".git/w.yaml"), &wf("hidden", "x"));
    write(&dir.path().join("z.yaml"), &wf("visible", "x"));
    wait_for("the visible file to load", || r.get("visible").is_some());
    assert_eq!(r.names(), ["visible"]);
    assert_eq!(r.status().len(), 1);
}

#[test]
fn dropping_the_watcher_stops_reloading() {
    let dir = tempfile::tempdir().unwrap();
    let r = registry(dir.path());
    r.load_all();
    let w = watch(&r);
    write(&dir.path().join("a.yaml"), &wf("alpha", "x"));
    wait_for("the file to load", || r.get("alpha").is_some());
    drop(w);
    // The watcher's thread is gone: the registry is only held here now.
    wait_for("the watcher to let go of the registry", || Arc::strong_count(&r) == 1);
}

// ---------------------------------------------------------------- hostile folders

/// A file outside the watched folder that must never be quoted.
const SECRET: &str = "root:SECRET-HASH-1:19000:0:99999:7:::\nversion: 1\nname: leaked\ntasks: [{name: a, uses: echo}]\n";

#[test]
fn symlinks_out_of_the_folder_are_not_read_and_links_inside_it_load() {
    let base = tempfile::tempdir().unwrap();
    let outside = base.path().join("outside");
    let flows = base.path().join("flows");
    std::fs::create_dir_all(&outside).unwrap();
    // Hidden folders are not walked: the file loads only through the link.
    std::fs::create_dir_all(flows.join(".shared")).unwrap();
    write(&outside.join("secret.yaml"), SECRET);
    write(&outside.join("valid.yaml"), &wf("external", "x"));
    write(&flows.join(".shared/real.yaml"), &wf("linked", "x"));
    std::os::unix::fs::symlink(outside.join("secret.yaml"), flows.join("leak.yaml")).unwrap();
    std::os::unix::fs::symlink("../outside/valid.yaml", flows.join("valid.yaml")).unwrap();
    // A link to a file inside the folder: loaded.
    std::os::unix::fs::symlink(".shared/real.yaml", flows.join("inside.yml")).unwrap();
    let r = registry(&flows);
    let report = r.load_all();
    assert_eq!(r.names(), ["linked"], "{report:?}");
    assert_eq!(report.failed, [flows.join("leak.yaml").display().to_string(), flows.join("valid.yaml").display().to_string()]);
    for link in ["leak.yaml", "valid.yaml"] {
        let status = r.file_status(&flows.join(link)).unwrap();
        assert!(!status.last_attempt.ok);
        let d = &status.last_attempt.diagnostics;
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!((d[0].code, d[0].severity, d[0].span.start.line), (taskweave::Code::ExternalSymlink, taskweave::Severity::Warning, 1));
        assert!(d[0].message.contains("outside"), "{}", d[0].message);
    }
    let all = serde_json::to_string(&r.status()).unwrap();
    assert!(
        !all.contains("SECRET") && !all.contains("leaked") && !all.contains("\"workflow\":\"external\""),
        "nothing of the targets: {all}"
    );
    // The link inside is read where it resolves, and its status is under the link's name.
    assert!(r.file_status(&flows.join("inside.yml")).unwrap().last_attempt.ok);

    // A file that becomes a link out of the folder: not read, its last good version keeps serving.
    let plain = flows.join("plain.yaml");
    write(&plain, &wf("plain", "good"));
    r.load_all();
    let good = version(&r, "plain");
    std::fs::remove_file(&plain).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.yaml"), &plain).unwrap();
    let report = r.reload_paths(std::slice::from_ref(&plain));
    assert_eq!(report.failed, [plain.display().to_string()]);
    assert_eq!(version(&r, "plain"), good);
    assert_eq!(r.file_status(&plain).unwrap().last_attempt.diagnostics[0].code, taskweave::Code::ExternalSymlink);
}

#[test]
fn a_folder_that_is_moved_away_is_reported_missing_until_it_returns() {
    use taskweave::reload::FolderState;
    let base = tempfile::tempdir().unwrap();
    let flows = base.path().join("flows");
    std::fs::create_dir(&flows).unwrap();
    write(&flows.join("a.yaml"), &wf("alpha", "x"));
    let never = base.path().join("never-created");
    let not_a_folder = base.path().join("file.txt");
    write(&not_a_folder, "x");
    let r = Arc::new(Registry::new(vec![flows.clone(), never.clone(), not_a_folder.clone()], Default::default()));
    r.load_all();
    let states = |r: &Registry| r.folder_status().into_iter().map(|f| (f.path, f.state)).collect::<Vec<_>>();
    let key = |p: &Path| p.display().to_string();
    assert_eq!(
        states(&r),
        [(key(&flows), FolderState::Ok), (key(&never), FolderState::Missing), (key(&not_a_folder), FolderState::Unreadable)]
    );
    assert!(r.folder_status()[2].error.is_some());

    std::fs::rename(&flows, base.path().join("elsewhere")).unwrap();
    let report = r.load_all();
    assert_eq!(report.removed, ["alpha"]);
    assert_eq!(states(&r)[0], (key(&flows), FolderState::Missing));
    let json = serde_json::to_value(r.folder_status()).unwrap();
    assert_eq!(json[0], serde_json::json!({"path": key(&flows), "state": "missing", "error": null}));

    std::fs::rename(base.path().join("elsewhere"), &flows).unwrap();
    r.load_all();
    assert_eq!(states(&r)[0], (key(&flows), FolderState::Ok));
    assert_eq!(r.names(), ["alpha"]);
}

#[test]
fn a_huge_broken_file_is_capped_and_does_not_hold_the_others_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut huge = String::from("version: 1\nname: huge\ntasks:\n");
    for i in 0..50_000 {
        huge.push_str(&format!("  - {{name: t{i}, uses: echo, parents: [nope{i}]}}\n"));
    }
    write(&dir.path().join("huge.yaml"), &huge);
    for i in 0..3 {
        write(&dir.path().join(format!("w{i}.yaml")), &wf(&format!("w{i}"), "x"));
    }
    let r = registry(dir.path());
    let started = Instant::now();
    let report = r.load_all();
    // A generous bound for a debug build: the file took minutes before.
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    assert_eq!(r.names(), ["w0", "w1", "w2"]);
    assert_eq!(report.failed.len(), 1);
    let d = r.file_status(&dir.path().join("huge.yaml")).unwrap().last_attempt.diagnostics;
    assert_eq!(d.len(), 201);
    assert_eq!(d[200].code, taskweave::Code::TooManyDiagnostics);
    assert_eq!(d[200].message, "and 49800 more not shown (49800 errors), the first of them here");
}
