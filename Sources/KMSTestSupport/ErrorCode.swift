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
