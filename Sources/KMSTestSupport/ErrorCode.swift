public import KMSCore

/// The KMSError code `body` throws, or nil if it succeeds (`.internal` for any other error).
public func errorCode(_ body: () async throws -> Void) async -> KMSError.Code? {
    do {
        try await body()
        return nil
    } catch let error as KMSError {
        return error.code
    } catch {
        return .internal
    }
}

/// Asks `condition` every `interval` until it holds or `timeout` has passed; returns whether it held. For waiting on
/// a recovery whose timing the test does not control (a backend coming back).
public func eventually(within timeout: Duration, every interval: Duration = .milliseconds(20),
                       _ condition: () async throws -> Bool) async throws -> Bool {
    let start = ContinuousClock.now
    while true {
        if try await condition() { return true }
        if ContinuousClock.now - start >= timeout { return false }
        try await Task.sleep(for: interval)
    }
}
