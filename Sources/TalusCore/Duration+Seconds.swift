extension Duration {
    /// The duration in seconds, as a floating-point number (for rates, timeouts and figures).
    public var secondsDouble: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
