//! The permission matrix: which role may do what in a conference.
//!
//! Every action a participant asks for over signaling is checked here by the room state
//! machine, so the rule is enforced on the server whatever the UI shows. The README's
//! table is generated from [`markdown_table`] and a test keeps the two identical.

use crate::role::Role;

/// An action that needs a right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Publish microphone and camera.
    PublishCamera,
    /// Publish a screen share.
    PublishScreen,
    /// Admit or deny someone in the waiting room.
    Admit,
    /// Remove a participant from the conference.
    Remove,
    /// Mute another participant's microphone or camera.
    MuteOthers,
    /// End the conference for everyone.
    EndConference,
    /// See who is present (the roster).
    SeeRoster,
    /// Receive host rights (from the current host).
    ReceiveHost,
    /// Join without waiting for admission.
    SkipWaitingRoom,
}

impl Action {
    /// Every action, in table order.
    pub const ALL: [Action; 9] = [
        Action::PublishCamera,
        Action::PublishScreen,
        Action::Admit,
        Action::Remove,
        Action::MuteOthers,
        Action::EndConference,
        Action::SeeRoster,
        Action::ReceiveHost,
        Action::SkipWaitingRoom,
    ];

    /// Human-readable name (English / Japanese) for docs and the UI.
    pub fn label(self) -> &'static str {
        match self {
            Action::PublishCamera => "publish camera and microphone / カメラ・マイク送信",
            Action::PublishScreen => "publish screen / 画面共有",
            Action::Admit => "admit or deny / 入室許可・拒否",
            Action::Remove => "remove a participant / 退出させる",
            Action::MuteOthers => "mute others / 他者をミュート",
            Action::EndConference => "end the conference / 会議終了",
            Action::SeeRoster => "see the roster / 参加者一覧",
            Action::ReceiveHost => "receive host rights / ホスト権限の受領",
            Action::SkipWaitingRoom => "enter without waiting / 待合室なしで入室",
        }
    }
}

/// Whether `role` may perform `action`.
///
/// - The host (the ward nurse running the conference) may do everything.
/// - Hospital staff help run it: they admit guests and mute, and may receive host
///   rights, but only the host removes people or ends the conference.
/// - Guests (care manager, surveyor, family) take part but control nobody else; host
///   rights never pass to them, and family members do not share screens (a screen may
///   show other patients' records).
/// - Everyone present sees the roster: the online-consultation guideline asks that each
///   side knows who is present. (People still in the waiting room see nothing; that is
///   the room state machine's rule, not a role's.)
pub fn allowed(role: Role, action: Action) -> bool {
    use Action::*;
    use Role::*;
    match action {
        PublishCamera | SeeRoster => true,
        PublishScreen => role != Family,
        Admit | MuteOthers => matches!(role, Host | Staff),
        Remove | EndConference => role == Host,
        ReceiveHost | SkipWaitingRoom => matches!(role, Host | Staff),
    }
}

/// The matrix as a Markdown table (for the README).
pub fn markdown_table() -> String {
    let mut s = String::from("| action |");
    for r in Role::ALL {
        s.push_str(&format!(" {} |", r.as_str()));
    }
    s.push_str("\n|---|");
    for _ in Role::ALL {
        s.push_str(":-:|");
    }
    s.push('\n');
    for a in Action::ALL {
        s.push_str(&format!("| {} |", a.label()));
        for r in Role::ALL {
            s.push_str(if allowed(r, a) { " ✅ |" } else { " — |" });
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_control_nobody_and_never_receive_host_rights() {
        for role in [Role::CareManager, Role::Surveyor, Role::Family] {
            for action in [
                Action::Admit,
                Action::Remove,
                Action::MuteOthers,
                Action::EndConference,
                Action::ReceiveHost,
                Action::SkipWaitingRoom,
            ] {
                assert!(!allowed(role, action), "{role} must not {action:?}");
            }
            assert!(allowed(role, Action::PublishCamera));
        }
    }

    #[test]
    fn family_cannot_share_a_screen_but_other_roles_can() {
        assert!(!allowed(Role::Family, Action::PublishScreen));
        for role in [Role::Host, Role::Staff, Role::CareManager, Role::Surveyor] {
            assert!(allowed(role, Action::PublishScreen));
        }
    }

    #[test]
    fn host_can_do_everything() {
        for action in Action::ALL {
            assert!(allowed(Role::Host, action));
        }
    }

    #[test]
    fn readme_table_matches_the_matrix() {
        let readme = include_str!("../../README.md");
        assert!(
            readme.contains(&markdown_table()),
            "README.md must contain the permission table exactly as permissions::markdown_table() prints it:\n{}",
            markdown_table()
        );
    }
}
