//! The process-wide templates: the early one, forked by `init`, and the
//! shared default.

use std::os::fd::OwnedFd;
use std::sync::Mutex;

use super::handle::Template;
use crate::error::{Error, Result};

enum Early {
    None,
    Started { fd: OwnedFd, pid: i32 },
    Live(Template),
}

static EARLY: Mutex<Early> = Mutex::new(Early::None);
static SHARED: Mutex<Option<Template>> = Mutex::new(None);

pub(crate) fn set_early(fd: OwnedFd, pid: i32) {
    *EARLY.lock().unwrap_or_else(|p| p.into_inner()) = Early::Started { fd, pid };
}

impl Template {
    /// The program-wide default template (AnyEvent::Fork's `new`): the early
    /// template if there is one, otherwise a template started with
    /// [`Template::new`] on first use and kept for the life of the program.
    /// If it died, a new one is started.
    ///
    /// Do not prepare the shared template with state only one part of the
    /// program wants; make your own with [`Template::new`] instead.
    ///
    /// # Errors
    ///
    /// As [`Template::new`].
    pub fn shared() -> Result<Template> {
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = &*shared
            && t.is_alive()
        {
            return Ok(t.clone());
        }
        let t = match Template::early() {
            Ok(t) if t.is_alive() => t,
            _ => Template::new()?,
        };
        *shared = Some(t.clone());
        Ok(t)
    }

    /// The early template: a copy of this program forked by
    /// [`Init::early_template`](crate::Init::early_template) at the top of
    /// `main`, before any thread existed (AnyEvent::Fork::Early). Creating
    /// workers from it costs no `exec`, and it holds whatever `main` had
    /// set up before `init` (usually nothing).
    ///
    /// Every call returns a handle to the same process.
    ///
    /// # Errors
    ///
    /// [`Error::NoEarlyTemplate`] if none was requested,
    /// [`Error::NoRuntime`] outside a tokio runtime.
    pub fn early() -> Result<Template> {
        let mut early = EARLY.lock().unwrap_or_else(|p| p.into_inner());
        match &*early {
            Early::None => Err(Error::NoEarlyTemplate),
            Early::Live(t) => Ok(t.clone()),
            Early::Started { .. } => {
                tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
                let Early::Started { fd, pid } = std::mem::replace(&mut *early, Early::None) else {
                    unreachable!()
                };
                let t = Template::from_conn(fd, pid as u32, None)?;
                *early = Early::Live(t.clone());
                Ok(t)
            }
        }
    }
}
