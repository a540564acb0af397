// Configuration of image builds on the master (DESIGN §5). Owned by the images work; the master
// daemon reads it together with its other settings.

import TalusCore

/// Image store, VNC and deadline settings of the master.
public struct ImageConfig: Sendable {
    /// Every key this struct reads, for the reference page and typo detection.
    public static let keys: [SettingKey] = []

    public init(settings: Settings) throws {}
}
