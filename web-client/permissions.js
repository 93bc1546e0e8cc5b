// The permission matrix, mirrored from signaling/src/permissions.rs so the UI only offers
// what the server would accept. The server enforces it regardless: this is presentation only.
// Keep the two in step (the Rust side has the tests and generates the README table).

/** Actions that need a right; the values are for logs and data attributes only. */
export const Action = Object.freeze({
  PublishCamera: 'publish_camera',
  PublishScreen: 'publish_screen',
  Admit: 'admit',
  Remove: 'remove',
  MuteOthers: 'mute_others',
  EndConference: 'end_conference',
  SeeRoster: 'see_roster',
  ReceiveHost: 'receive_host',
  SkipWaitingRoom: 'skip_waiting_room',
});

/** Whether `role` ("host", "staff", "care_manager", "surveyor", "family") may perform `action`. */
export function allowed(role, action) {
  switch (action) {
    case Action.PublishCamera:
    case Action.SeeRoster:
      return true;
    case Action.PublishScreen:
      // A screen may show other patients' records; family members do not share screens.
      return Boolean(role) && role !== 'family';
    case Action.Admit:
    case Action.MuteOthers:
    case Action.ReceiveHost:
    case Action.SkipWaitingRoom:
      return role === 'host' || role === 'staff';
    case Action.Remove:
    case Action.EndConference:
      return role === 'host';
    default:
      return false;
  }
}

/** Host rights pass only from the host, and only to someone who may receive them (staff). */
export function canTransferHost(myRole, targetRole) {
  return myRole === 'host' && targetRole !== 'host' && allowed(targetRole, Action.ReceiveHost);
}
