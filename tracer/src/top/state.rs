//! What the person at `tracer top` chose — sort column and order, filter, selected process,
//! which screen — and the keys that change it. Pure: keys in, [`Action`]s out.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::model::{Column, OwnerId, Row, visible};

/// Which screen is up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The process table.
    Table,
    /// Typing a filter (applied as it is typed).
    Filter,
    /// One process's CLOSE_WAIT sockets.
    Sockets { owner: OwnerId },
}

/// What a key asks of the front-end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing changed.
    None,
    /// Draw again (the view is not rebuilt).
    Redraw,
    Quit,
}

/// The UI state.
#[derive(Clone, Debug)]
pub struct UiState {
    pub sort: Column,
    pub descending: bool,
    pub filter: String,
    /// The selected process (kept across redraws while it is listed).
    pub selected: Option<OwnerId>,
    pub mode: Mode,
    /// First socket line shown on the sockets screen.
    pub scroll: usize,
}

impl Default for UiState {
    fn default() -> Self {
        UiState {
            sort: Column::CloseWait,
            descending: true,
            filter: String::new(),
            selected: None,
            mode: Mode::Table,
            scroll: 0,
        }
    }
}

const PAGE: isize = 10;

impl UiState {
    /// The rows shown, in order.
    pub fn visible<'a>(&self, rows: &'a [Row]) -> Vec<&'a Row> {
        visible(rows, &self.filter, self.sort, self.descending)
    }

    /// Index of the selected row among `shown` (the first row when the selection is not
    /// listed).
    pub fn selected_index(&self, shown: &[&Row]) -> Option<usize> {
        if shown.is_empty() {
            return None;
        }
        Some(
            self.selected
                .and_then(|s| shown.iter().position(|r| r.owner == s))
                .unwrap_or(0),
        )
    }

    /// Handles one key; `rows` are the current view's rows (unsorted).
    pub fn on_key(&mut self, key: KeyEvent, rows: &[Row]) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL)
            && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('d'))
        {
            return Action::Quit;
        }
        // Esc and the next key typed at once reach the terminal as one sequence, which reads
        // as Alt+key (a quick Esc then `/`): take it as the two keys it was.
        if key.modifiers == KeyModifiers::ALT
            && let KeyCode::Char(c) = key.code
        {
            let esc = self.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE), rows);
            let next = self.on_key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE), rows);
            return match (esc, next) {
                (_, Action::Quit) => Action::Quit,
                (Action::None, Action::None) => Action::None,
                _ => Action::Redraw,
            };
        }
        match self.mode.clone() {
            Mode::Filter => self.filter_key(key),
            Mode::Sockets { .. } => self.sockets_key(key),
            Mode::Table => self.table_key(key, rows),
        }
    }

    fn table_key(&mut self, key: KeyEvent, rows: &[Row]) -> Action {
        let shown = self.visible(rows);
        let at = self.selected_index(&shown);
        let mut select = |d: isize| {
            if let Some(i) = at {
                let j = (i as isize + d).clamp(0, shown.len() as isize - 1) as usize;
                self.selected = Some(shown[j].owner);
            }
        };
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Up | KeyCode::Char('k') => select(-1),
            KeyCode::Down | KeyCode::Char('j') => select(1),
            KeyCode::PageUp => select(-PAGE),
            KeyCode::PageDown => select(PAGE),
            KeyCode::Home => select(isize::MIN / 2),
            KeyCode::End => select(isize::MAX / 2),
            KeyCode::Char('<') | KeyCode::Char(',') | KeyCode::Left => self.sort_by(-1, rows),
            KeyCode::Char('>') | KeyCode::Char('.') | KeyCode::Right => self.sort_by(1, rows),
            KeyCode::Char('r') => self.descending = !self.descending,
            KeyCode::Char('/') => self.mode = Mode::Filter,
            KeyCode::Esc if !self.filter.is_empty() => self.filter.clear(),
            KeyCode::Enter => match at {
                Some(i) => {
                    self.selected = Some(shown[i].owner);
                    self.scroll = 0;
                    self.mode = Mode::Sockets {
                        owner: shown[i].owner,
                    };
                }
                None => return Action::None,
            },
            _ => return Action::None,
        }
        Action::Redraw
    }

    /// The previous or next column; the container column only when some row has one (it is
    /// not shown otherwise).
    fn sort_by(&mut self, step: isize, rows: &[Row]) {
        self.sort = self.sort.step(step);
        if self.sort == Column::Container && rows.iter().all(|r| r.container.is_none()) {
            self.sort = self.sort.step(step);
        }
        self.descending = self.sort.descending_first();
    }

    fn filter_key(&mut self, key: KeyEvent) -> Action {
        match key.code {
            KeyCode::Enter => self.mode = Mode::Table,
            KeyCode::Esc => {
                self.filter.clear();
                self.mode = Mode::Table;
            }
            KeyCode::Backspace => {
                self.filter.pop();
            }
            KeyCode::Char(c) if !c.is_control() && self.filter.chars().count() < 64 => {
                self.filter.push(c);
            }
            _ => return Action::None,
        }
        Action::Redraw
    }

    fn sockets_key(&mut self, key: KeyEvent) -> Action {
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Esc | KeyCode::Backspace | KeyCode::Left | KeyCode::Char('h') => {
                self.mode = Mode::Table;
            }
            KeyCode::Up | KeyCode::Char('k') => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => self.scroll = self.scroll.saturating_add(1),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_sub(PAGE as usize),
            KeyCode::PageDown => self.scroll = self.scroll.saturating_add(PAGE as usize),
            KeyCode::Home => self.scroll = 0,
            // The front-end stops it at the last socket.
            KeyCode::End => self.scroll = usize::MAX,
            _ => return Action::None,
        }
        Action::Redraw
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Comm;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn row(pid: u32, comm: &str, cw: u64) -> Row {
        Row {
            owner: Some(pid),
            comm: Comm::new(comm),
            container: None,
            close_wait: cw,
            leaking: 0,
            not_accepted: 0,
            oldest_ns: None,
            rates: [0.0; 5],
            p99_close_wait_ns: None,
            p50_idle_ns: None,
        }
    }

    fn shown(ui: &UiState, rows: &[Row]) -> Vec<u32> {
        ui.visible(rows).iter().filter_map(|r| r.owner).collect()
    }

    #[test]
    fn esc_typed_with_the_next_key_counts_as_both() {
        let rows = vec![row(1, "alpha", 1), row(2, "beta", 5)];
        let mut ui = UiState::default();
        assert_eq!(ui.on_key(key(KeyCode::Enter), &rows), Action::Redraw);
        assert_eq!(ui.mode, Mode::Sockets { owner: Some(2) });
        // Esc + '/' in one read: back to the table, then typing a filter.
        let alt = |c| KeyEvent::new(KeyCode::Char(c), KeyModifiers::ALT);
        assert_eq!(ui.on_key(alt('/'), &rows), Action::Redraw);
        assert_eq!(ui.mode, Mode::Filter);
        ui.on_key(key(KeyCode::Char('b')), &rows);
        // Esc + 'q' while filtering: the filter is cleared, then top quits.
        assert_eq!(ui.on_key(alt('q'), &rows), Action::Quit);
        assert!(ui.filter.is_empty() && ui.mode == Mode::Table);
    }

    #[test]
    fn sort_keys_filter_keys_and_quit() {
        let rows = vec![row(1, "alpha", 1), row(2, "beta", 5), row(3, "gamma", 3)];
        let mut ui = UiState::default();
        assert_eq!(shown(&ui, &rows), vec![2, 3, 1]);
        // `<` moves the sort one column left: CLOSE_WAIT → COMM (ascending); CONTAINER, between
        // them, only when a row has a container.
        assert_eq!(ui.on_key(key(KeyCode::Char('<')), &rows), Action::Redraw);
        assert_eq!((ui.sort, ui.descending), (Column::Comm, false));
        let mut boxed = rows.clone();
        boxed[0].container = crate::container::ContainerId::parse(&"0f".repeat(32));
        let mut other = UiState::default();
        other.on_key(key(KeyCode::Char('<')), &boxed);
        assert_eq!(other.sort, Column::Container);
        assert_eq!(shown(&ui, &rows), vec![1, 2, 3]);
        ui.on_key(key(KeyCode::Char('r')), &rows);
        assert_eq!(shown(&ui, &rows), vec![3, 2, 1]);

        // `/` then typing filters as it is typed; Enter keeps it, Esc in the table clears it.
        ui.on_key(key(KeyCode::Char('/')), &rows);
        assert_eq!(ui.mode, Mode::Filter);
        // `q` while typing is text, not quit.
        for c in "gaq".chars() {
            assert_eq!(ui.on_key(key(KeyCode::Char(c)), &rows), Action::Redraw);
        }
        assert_eq!(shown(&ui, &rows), Vec::<u32>::new());
        ui.on_key(key(KeyCode::Backspace), &rows);
        assert_eq!(shown(&ui, &rows), vec![3]);
        ui.on_key(key(KeyCode::Enter), &rows);
        assert_eq!((ui.mode.clone(), ui.filter.as_str()), (Mode::Table, "ga"));
        ui.on_key(key(KeyCode::Esc), &rows);
        assert_eq!(shown(&ui, &rows).len(), 3);
        ui.on_key(key(KeyCode::Char('/')), &rows);
        ui.on_key(key(KeyCode::Char('2')), &rows);
        ui.on_key(key(KeyCode::Enter), &rows);
        assert_eq!(shown(&ui, &rows), vec![2]);

        assert_eq!(ui.on_key(key(KeyCode::Char('q')), &rows), Action::Quit);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        ui.mode = Mode::Filter;
        assert_eq!(ui.on_key(ctrl_c, &rows), Action::Quit);
    }

    #[test]
    fn selection_follows_the_process_and_enter_opens_its_sockets() {
        let mut rows = vec![row(1, "alpha", 1), row(2, "beta", 5), row(3, "gamma", 3)];
        let mut ui = UiState::default();
        assert_eq!(ui.selected_index(&ui.visible(&rows)), Some(0));
        ui.on_key(key(KeyCode::Down), &rows);
        assert_eq!(ui.selected, Some(Some(3)));
        // The order changes: the selection stays on process 3.
        rows[2].close_wait = 9;
        assert_eq!(ui.selected_index(&ui.visible(&rows)), Some(0));
        ui.on_key(key(KeyCode::End), &rows);
        assert_eq!(ui.selected, Some(Some(1)));
        ui.on_key(key(KeyCode::Down), &rows);
        assert_eq!(ui.selected, Some(Some(1)), "stays at the last row");
        ui.on_key(key(KeyCode::Enter), &rows);
        assert_eq!(ui.mode, Mode::Sockets { owner: Some(1) });
        ui.on_key(key(KeyCode::Down), &rows);
        assert_eq!(ui.scroll, 1);
        ui.on_key(key(KeyCode::Esc), &rows);
        assert_eq!(ui.mode, Mode::Table);
        // Nothing to open when nothing is listed.
        assert_eq!(ui.on_key(key(KeyCode::Enter), &[]), Action::None);
    }
}
