import KMSCore
public import KMSServer
import KMSService
public import Logging
public import ServiceLifecycle
import Synchronization

/// Rewraps managed objects after kmsd's wrapping key rotates, and reseals objects stored before kmsd bound their owner
/// and names to the seal (until one sweep finds none): every `interval` a sweep seals the material of objects
/// still under an older version again under the wrapping version, `batch` at a time. Progress is the count left (the
/// `kmsd_kmip_objects_to_rewrap` gauge; `kmsctl kmip objects list` counts objects by version). An object that changes
/// meanwhile, or fails on its own, is left for the next sweep; with the backend down a sweep stops and the next one
/// tries again, and nothing is lost: the old version still opens what it wrapped until an operator retires it.
public final class KMIPRewrapJob: Service, Sendable {
    let frontEnd: KMIPFrontEnd
    let interval: Duration
    let batch: Int
    let metrics: ServerMetrics?
    let logger: Logger
    private let state = Mutex<(remaining: Int?, rewrapped: Int)>((nil, 0))
    /// Whether a whole sweep found no object with the old seal (bound to its id only); until then each pass looks.
    private let legacySealsGone = Mutex(false)

    public init(frontEnd: KMIPFrontEnd, interval: Duration = .seconds(10), batch: Int = 100, metrics: ServerMetrics? = nil,
                logger: Logger = Logger(label: "kmsd.kmip.rewrap")) {
        self.frontEnd = frontEnd
        self.interval = interval
        self.batch = batch
        self.metrics = metrics
        self.logger = logger
    }

    /// Objects under an older version of the wrapping key at the last pass (nil before the first); rewrapped since start.
    public var progress: (remaining: Int?, rewrapped: Int) { state.withLock { $0 } }

    public func run() async throws {
        try? await cancelWhenGracefulShutdown {
            // The first pass after one interval: at start the wrapping key may not exist yet (an operator creates it).
            while !Task.isCancelled {
                try await Task.sleep(for: self.interval)
                await self.pass()
            }
        }
    }

    /// One sweep: rewraps every object under an older version, page by page, passing over those that fail on their
    /// own (they are logged, and the next sweep tries them again); an outage ends the sweep. Returns how many objects
    /// were left under older versions at its end (nil when unknown).
    @discardableResult
    public func pass() async -> Int? {
        guard let key = frontEnd.configuration.wrappingKey else { return nil }
        let service = frontEnd.service
        do {
            await resealLegacy(key)
            let remaining = try await service.managedObjectsToRewrap(wrappingKey: key)
            record(remaining: remaining, rewrapped: 0)
            guard remaining > 0 else { return 0 }
            var after: String?
            repeat {
                let pass = try await service.rewrapManagedObjects(wrappingKey: key, after: after, limit: batch)
                record(remaining: nil, rewrapped: pass.rewrapped)
                if pass.rewrapped + pass.failed > 0 {
                    logger.info("managed objects rewrapped", metadata: [
                        "key": "\(key)", "rewrapped": "\(pass.rewrapped)", "failed": "\(pass.failed)", "skipped": "\(pass.skipped)",
                    ])
                }
                after = pass.next
            } while after != nil
            let left = try await service.managedObjectsToRewrap(wrappingKey: key)
            record(remaining: left, rewrapped: 0)
            return left
        } catch {
            logger.warning("rewrapping managed objects failed; retrying later", metadata: ["key": "\(key)", "error": "\(error)"])
            return nil
        }
    }

    /// One sweep resealing objects with the old seal (bound to their id only), until a whole sweep reseals none:
    /// those left then fail on their own (a key no longer configured, a changed description) and are opened, or
    /// refused, at their next use. With `kmip.legacy_seals: refuse` there is nothing to do. Its own errors end only
    /// this sweep, never the rewrap pass.
    private func resealLegacy(_ key: KeyName) async {
        guard frontEnd.configuration.acceptLegacySeals, !legacySealsGone.withLock({ $0 }) else { return }
        var after: String?
        var resealed = 0
        var failed = 0
        do {
            repeat {
                let pass = try await frontEnd.service.resealLegacyManagedObjects(wrappingKey: key, after: after, limit: batch)
                resealed += pass.rewrapped
                failed += pass.failed
                after = pass.next
            } while after != nil
        } catch {
            logger.warning("resealing managed objects failed; retrying later", metadata: ["key": "\(key)", "error": "\(error)"])
            return
        }
        if resealed + failed > 0 {
            logger.info("managed objects resealed (their owner and names bound)", metadata: [
                "key": "\(key)", "resealed": "\(resealed)", "failed": "\(failed)",
            ])
        }
        if resealed == 0 { legacySealsGone.withLock { $0 = true } }
    }

    private func record(remaining: Int?, rewrapped: Int) {
        let current = state.withLock { state -> Int? in
            if let remaining { state.remaining = remaining }
            state.rewrapped += rewrapped
            return state.remaining
        }
        if let current { metrics?.gauge("kmsd_kmip_objects_to_rewrap", [], Double(current)) }
    }
}
