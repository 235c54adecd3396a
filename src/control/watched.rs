//! The pipelines a metrics server shows on `/topology` and, with the control surface on,
//! offers on `/control`: added by the service as it starts them, dropped once they end.

use std::sync::{Arc, RwLock};

use crate::control::Control;

/// A server's pipelines. Cheap to clone: one list, shared by the server's routes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Watched(Arc<RwLock<Vec<Control>>>);

impl Watched {
    /// Adds a pipeline; one of the same name is replaced (a pipeline restarted).
    pub(crate) fn add(&self, control: Control) {
        let mut pipelines = self.0.write().unwrap_or_else(|e| e.into_inner());
        pipelines.retain(|known| known.name != control.name);
        pipelines.push(control);
    }

    /// The pipelines still running (their handle not dropped); the others are forgotten.
    pub(crate) fn list(&self) -> Vec<Control> {
        let mut pipelines = self.0.write().unwrap_or_else(|e| e.into_inner());
        pipelines.retain(Control::is_running);
        pipelines.clone()
    }

    pub(crate) fn find(&self, name: &str) -> Option<Control> {
        self.list().into_iter().find(|control| *control.name == *name)
    }
}
