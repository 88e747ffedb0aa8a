//! The names templates and workers show in `ps` and `top`.
//!
//! A forked process keeps its parent's name, so without this every
//! template and worker would show as the program itself. Each sets its
//! `comm` (the name `top`, `ps -e`, `pgrep` and `/proc/<pid>/comm` show; at
//! most 15 bytes) when it starts:
//!
//! - a template: `tmpl:` and the name of the program's executable
//!   (`tmpl:tour`);
//! - a worker: its entry's name without the module path (`greeter` for an
//!   entry named `my_app::workers::greeter`; the init hook's name for a
//!   fork-rpc entry);
//! - an `exec`'d command: its own, as the kernel sets it.
//!
//! The command line (`ps -f`, `/proc/<pid>/cmdline`) stays the program's:
//! rewriting it means writing over `argv`, which `std::env::args` reads
//! again in the process, so entries and init functions would see the name
//! instead of their arguments.

use crate::sys;

/// What a template's name starts with.
const TEMPLATE: &str = "tmpl:";

/// Names the calling process a template: `tmpl:` and the program's name,
/// unless it has one already (a template forked by a template).
pub(crate) fn name_template() {
    let Ok(current) = sys::thread_name() else {
        return;
    };
    if current.starts_with(TEMPLATE) {
        return;
    }
    // The executable's name: a template started by `exec` (of
    // `/proc/self/exe`) is named `exe` by the kernel.
    let program = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or(current);
    let _ = sys::set_thread_name(&template_name(&program));
}

/// Names the calling process after the entry it runs.
pub(crate) fn name_worker(entry: &str) {
    let _ = sys::set_thread_name(worker_name(entry));
}

fn template_name(program: &str) -> String {
    format!("{TEMPLATE}{program}")
}

fn worker_name(entry: &str) -> &str {
    entry.rsplit("::").next().unwrap_or(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_is_named_after_its_entry_without_the_module_path() {
        assert_eq!(worker_name("my_app::workers::greeter"), "greeter");
        assert_eq!(worker_name("greeter"), "greeter");
        assert_eq!(worker_name("stable-name"), "stable-name");
    }

    #[test]
    fn a_template_is_named_after_the_program() {
        assert_eq!(template_name("tour"), "tmpl:tour");
    }
}
