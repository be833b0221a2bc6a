//! Binding of live migration: `manager.migrate()` and `GuestMemoryBuilder.migrateFrom()` over
//! a `NativeMigrationChannel`, the core's channel transport that the TypeScript layer joins to
//! a Node `Duplex` (it feeds the stream's chunks in and writes what comes out; see
//! `docs/migration.md`, "Transports").
//!
//! The caller's `pause` runs in JavaScript: the migration's thread calls it through a
//! thread-safe function and waits for the answer the TypeScript layer gives back through the
//! channel (`resolvePause`/`rejectPause`). Values the stream fails with or `pause` throws are
//! kept by the TypeScript layer under a token, which the error of the migration names
//! (`js_api::migrations`).

use crate::args::U64;
use crate::errors::internal;
use crate::errors::throw;
use crate::manager::NativeGuestMemoryManager;
use crate::progress::progress_callback;
use crate::promise::json_promise;
use crate::promise::promise;
use crate::snapshot::NativeRestoreOptions;
use crate::snapshot::NativeRestoredManager;
use futures::channel::oneshot;
use js_api::executor::Polling;
use js_api::json::to_json;
use js_api::migrations::stream_error;
use js_api::migrations::MigrationInfoView;
use js_api::migrations::PauseAnswer;
use js_api::JsError;
use js_api::ToJsError;
use membacking::migration::channel_transport;
use membacking::migration::IncomingSender;
use membacking::migration::MigrateFromOptions;
use membacking::migration::MigrateOptions;
use membacking::migration::MigrationProgress;
use membacking::migration::MigrationTransport;
use membacking::migration::OutgoingReceiver;
use membacking::migration::StreamEnd;
use membacking::migration::CHANNEL_CAPACITY;
use membacking::GuestMemoryBuilder;
use napi::bindgen_prelude::Buffer;
use napi::bindgen_prelude::FnArgs;
use napi::bindgen_prelude::Function;
use napi::bindgen_prelude::Object;
use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use napi::Env;
use napi_derive::napi;
use parking_lot::Mutex;
use std::sync::Arc;

/// One migration's byte stream as the core sees it, and the stream owner's ends of it.
#[napi]
pub struct NativeMigrationChannel {
    transport: Option<MigrationTransport>,
    incoming: IncomingSender,
    outgoing: OutgoingReceiver,
    pause_reply: Arc<Mutex<Option<oneshot::Sender<PauseAnswer>>>>,
}

impl NativeMigrationChannel {
    fn take_transport(&mut self) -> napi::Result<MigrationTransport> {
        self.transport
            .take()
            .ok_or_else(|| throw(JsError::closed("the migration channel (used once)")))
    }

    fn answer_pause(&self, answer: PauseAnswer) {
        if let Some(sender) = self.pause_reply.lock().take() {
            let _ = sender.send(answer);
        }
    }
}

#[napi]
impl NativeMigrationChannel {
    /// A channel holding at most `capacity` bytes each way (default 4 MiB).
    #[napi(constructor)]
    pub fn new(capacity: Option<U64>) -> napi::Result<Self> {
        let capacity = match capacity {
            Some(capacity) => usize::try_from(capacity.0)
                .map_err(|_| throw(JsError::arg_value("capacity does not fit in memory")))?,
            None => CHANNEL_CAPACITY,
        };
        let (transport, StreamEnd { incoming, outgoing }) = channel_transport(capacity);
        Ok(NativeMigrationChannel {
            transport: Some(transport),
            incoming,
            outgoing,
            pause_reply: Arc::default(),
        })
    }

    /// Queues a received chunk (copied) if the migration has room now: false when it has not
    /// (then `push` it and read nothing more until that resolves). Throws
    /// `ERR_MIGRATION_ABORTED` when the migration stopped reading.
    #[napi]
    pub fn offer(&self, chunk: &[u8]) -> napi::Result<bool> {
        self.incoming
            .offer(chunk.to_vec())
            .map(|handed_back| handed_back.is_none())
            .map_err(|error| throw(stopped_reading(&error)))
    }

    /// Queues a received chunk (copied), resolving when the migration has room for it.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn push<'env>(&self, env: &'env Env, chunk: &[u8]) -> napi::Result<Object<'env>> {
        let push = self.incoming.push(chunk.to_vec());
        promise(
            env,
            Polling::Inline,
            async move { push.await.map_err(|error| stopped_reading(&error)) },
            |_env, ()| Ok(()),
        )
    }

    /// The stream ended: the migration reads what is queued, then the end.
    #[napi]
    pub fn end(&self) {
        self.incoming.end();
    }

    /// The stream failed with `message` (or the migration was aborted); the value it failed
    /// with is kept under `causeToken`. Both directions fail, and a `pause` still pending is
    /// answered with the failure: the migration stops with that error as its cause.
    #[napi]
    pub fn fail(&self, message: String, cause_token: Option<u32>) {
        self.incoming.fail(stream_error(&message, cause_token));
        self.outgoing.fail(stream_error(&message, cause_token));
        self.answer_pause(PauseAnswer::Failed {
            message,
            cause_token,
        });
    }

    /// The next chunk to write if one is queued now; `null` when none is (then `next()`).
    #[napi]
    pub fn try_next(&self) -> Option<Buffer> {
        self.outgoing.try_next().flatten().map(Buffer::from)
    }

    /// The next chunk to write; `null` once the migration has finished writing.
    #[napi(ts_return_type = "Promise<Buffer | null>")]
    pub fn next<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        let next = self.outgoing.next();
        promise(
            env,
            Polling::Inline,
            async move { Ok(next.await) },
            |_env, chunk| Ok(chunk.map(Buffer::from)),
        )
    }

    /// What was fed and not read when the migration finished (to hand back to the stream).
    #[napi]
    pub fn unread(&self) -> Buffer {
        Buffer::from(self.incoming.unread())
    }

    /// Drops the transport if no migration took it (a call that failed before starting): the
    /// outgoing side then ends.
    #[napi]
    pub fn close(&mut self) {
        self.transport = None;
    }

    /// `pause` resolved, with the payload to carry in the final round.
    #[napi]
    pub fn resolve_pause(&self, payload: Option<&[u8]>) {
        self.answer_pause(PauseAnswer::Paused(payload.map(<[u8]>::to_vec)));
    }

    /// `pause` threw `message`; the thrown value is kept under `causeToken`.
    #[napi]
    pub fn reject_pause(&self, message: String, cause_token: Option<u32>) {
        self.answer_pause(PauseAnswer::Failed {
            message,
            cause_token,
        });
    }
}

/// The error of a feed the migration no longer reads.
fn stopped_reading(error: &std::io::Error) -> JsError {
    JsError::new(
        js_api::errors::ErrorClass::MigrationError,
        js_api::errors::ErrorCode::MigrationAborted,
        format!("the migration no longer reads its stream: {error}"),
    )
}

/// `onProgress(round, bytes)` as the core's migration progress.
fn migration_progress(
    on_progress: Option<Function<'_, FnArgs<(u64, u64)>, ()>>,
) -> napi::Result<Option<MigrationProgress>> {
    let Some(on_progress) = on_progress else {
        return Ok(None);
    };
    let report = progress_callback(on_progress)?;
    Ok(Some(Arc::new(move |round, bytes| {
        report(u64::from(round), bytes)
    })))
}

#[napi]
impl NativeGuestMemoryManager {
    /// Migrates this manager's memory over `channel`; `pause()` is called once, before the
    /// final round, and answered through the channel. Resolves with the JSON of
    /// `MigrationInfo`.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn migrate<'env>(
        &self,
        env: &'env Env,
        channel: &mut NativeMigrationChannel,
        pause: Function<'env, (), ()>,
        max_rounds: Option<U64>,
        max_downtime_ms: Option<U64>,
        on_progress: Option<Function<'env, FnArgs<(u64, u64)>, ()>>,
    ) -> napi::Result<Object<'env>> {
        let manager = self.manager()?;
        let max_rounds = max_rounds
            .map(|rounds| js_api::migrations::max_rounds(rounds.0))
            .transpose()
            .map_err(throw)?;
        let progress = migration_progress(on_progress)?;
        let request_pause = pause
            .build_threadsafe_function::<()>()
            .callee_handled::<false>()
            .build()
            .map_err(internal)?;
        let transport = channel.take_transport()?;
        let (reply, answer) = oneshot::channel();
        *channel.pause_reply.lock() = Some(reply);
        let mut options = MigrateOptions::new(move || {
            let _ = request_pause.call((), ThreadsafeFunctionCallMode::NonBlocking);
            async move { PauseAnswer::into_result(answer.await.ok()) }
        });
        options.max_rounds = max_rounds;
        options.max_downtime_ms = max_downtime_ms.map(|ms| ms.0);
        options.progress = progress;
        json_promise(
            env,
            Polling::Pool,
            manager.migrate(transport, options),
            |info| to_json(&MigrationInfoView::from(info)),
        )
    }
}

/// Builds a manager from the migration arriving over `channel`, with the layout and window
/// backings of `options` (consumed; its restore-only settings are not used) and `onProgress`.
#[napi(ts_return_type = "Promise<NativeRestoredManager>")]
pub fn migrate_guest_memory<'env>(
    env: &'env Env,
    channel: &mut NativeMigrationChannel,
    options: &mut NativeRestoreOptions,
    on_progress: Option<Function<'env, FnArgs<(u64, u64)>, ()>>,
) -> napi::Result<Object<'env>> {
    let restore = options.take()?;
    let options = MigrateFromOptions {
        progress: migration_progress(on_progress)?,
        layout: restore.layout,
        window_backings: restore.window_backings,
    };
    let transport = channel.take_transport()?;
    let migration = GuestMemoryBuilder::migrate_from(transport, options);
    promise(
        env,
        Polling::Pool,
        async move { migration.await.map_err(|error| error.to_js_error()) },
        |env, migrated| Ok(NativeRestoredManager::migrated(&env, migrated)),
    )
}
