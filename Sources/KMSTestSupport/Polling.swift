/// Polls `condition` every 10 ms until it holds or `limit` passes; whether it held. For what happens on its own
/// schedule (a background reservation, a notification from another process), never as a timing assertion.
public func within(_ limit: Duration, _ condition: () async throws -> Bool) async throws -> Bool {
    let start = ContinuousClock.now
    while ContinuousClock.now - start < limit {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(10))
    }
    return try await condition()
}
