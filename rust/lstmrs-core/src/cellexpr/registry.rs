//! The process-wide registry of compiled custom cells: a cell description (JSON) is compiled once
//! and named by a [`CellId`] that [`CellKind::Custom`] carries, so configurations stay `Copy`.

use super::CompiledCell;
use crate::config::CellKind;
use crate::error::Result;
use crate::forklock::ForkRwLock;
use std::collections::HashMap;
use std::sync::OnceLock;

/// A compiled custom cell in the process-wide registry (see [`register_cell`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CellId(u32);

/// One registry entry; entries are never removed, so they are leaked once and lent as `'static`.
struct Entry {
    cell: CompiledCell,
    json: String,
}

#[derive(Default)]
struct Registry {
    cells: Vec<&'static Entry>,
    by_json: HashMap<String, CellId>,
}

/// Behind a [`ForkRwLock`]: a forked child can register cells even if a thread of the parent was
/// registering one at the fork.
fn registry() -> &'static ForkRwLock<Registry> {
    static REG: OnceLock<ForkRwLock<Registry>> = OnceLock::new();
    REG.get_or_init(Default::default)
}

/// Compiles a cell description (JSON, `notes/cell_dsl.md`) once and returns its kind. The same
/// text registered twice gives the same id without recompiling.
pub fn register_cell(json: &str) -> Result<CellKind> {
    if let Some(&id) = registry().read().by_json.get(json) {
        return Ok(CellKind::Custom(id));
    }
    let cell = CompiledCell::from_json(json)?;
    let mut reg = registry().write();
    if let Some(&id) = reg.by_json.get(json) {
        return Ok(CellKind::Custom(id));
    }
    let id = CellId(reg.cells.len() as u32);
    let entry: &'static Entry = Box::leak(Box::new(Entry {
        cell,
        json: json.to_owned(),
    }));
    reg.cells.push(entry);
    reg.by_json.insert(json.to_owned(), id);
    Ok(CellKind::Custom(id))
}

fn entry(id: CellId) -> &'static Entry {
    // Ids are only made by `register_cell`, so the index exists.
    registry().read().cells[id.0 as usize]
}

/// The compiled program of a registered cell.
pub(crate) fn compiled(id: CellId) -> &'static CompiledCell {
    &entry(id).cell
}

/// The description a cell was registered from.
pub(crate) fn description(id: CellId) -> &'static str {
    &entry(id).json
}
