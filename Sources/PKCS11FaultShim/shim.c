// PKCS11FaultShim: see include/PKCS11FaultShim.h for what it does and how to drive it.
#define _GNU_SOURCE
#include "PKCS11FaultShim.h"

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit-1/p11-kit/pkcs11.h>

#define MAX_RULES 32
#define NAME_LEN 48

enum kind { KIND_PLAIN, KIND_SLOT, KIND_SESSION };

struct rule {
    char function[NAME_LEN]; // "*" for every function
    CK_RV value;
    long remaining; // -1: until the control file changes
};

struct session {
    CK_SESSION_HANDLE real;
    CK_SLOT_ID slot;
    int alive;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static CK_FUNCTION_LIST_PTR real;
static CK_RV load_error = CKR_OK;
static char control_path[PATH_MAX];
static char status_path[PATH_MAX + 16];

// Control state, guarded by `lock`.
static int control_known;
static struct rule rules[MAX_RULES];
static int rule_count;
static long hang_ms;
static char hang_function[NAME_LEN];
static int down;
static int reinitialized_while_down;
static long kill_remaining;

// Shim state, guarded by `lock`.
static int initialized;
static struct session *sessions;
static size_t session_count, session_capacity;
static long faults_injected, dead_session_calls, initialize_calls, finalize_calls, login_calls;
static int status_dirty;

static const struct {
    const char *name;
    CK_RV value;
} value_names[] = {
    {"CKR_OK", CKR_OK},
    {"CKR_HOST_MEMORY", CKR_HOST_MEMORY},
    {"CKR_SLOT_ID_INVALID", CKR_SLOT_ID_INVALID},
    {"CKR_GENERAL_ERROR", CKR_GENERAL_ERROR},
    {"CKR_FUNCTION_FAILED", CKR_FUNCTION_FAILED},
    {"CKR_DEVICE_ERROR", CKR_DEVICE_ERROR},
    {"CKR_DEVICE_MEMORY", CKR_DEVICE_MEMORY},
    {"CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED},
    {"CKR_ENCRYPTED_DATA_INVALID", CKR_ENCRYPTED_DATA_INVALID},
    {"CKR_FUNCTION_CANCELED", CKR_FUNCTION_CANCELED},
    {"CKR_FUNCTION_NOT_SUPPORTED", CKR_FUNCTION_NOT_SUPPORTED},
    {"CKR_KEY_HANDLE_INVALID", CKR_KEY_HANDLE_INVALID},
    {"CKR_KEY_FUNCTION_NOT_PERMITTED", CKR_KEY_FUNCTION_NOT_PERMITTED},
    {"CKR_MECHANISM_INVALID", CKR_MECHANISM_INVALID},
    {"CKR_OBJECT_HANDLE_INVALID", CKR_OBJECT_HANDLE_INVALID},
    {"CKR_OPERATION_ACTIVE", CKR_OPERATION_ACTIVE},
    {"CKR_PIN_INCORRECT", CKR_PIN_INCORRECT},
    {"CKR_SESSION_CLOSED", CKR_SESSION_CLOSED},
    {"CKR_SESSION_COUNT", CKR_SESSION_COUNT},
    {"CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID},
    {"CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT},
    {"CKR_TOKEN_NOT_RECOGNIZED", CKR_TOKEN_NOT_RECOGNIZED},
    {"CKR_USER_NOT_LOGGED_IN", CKR_USER_NOT_LOGGED_IN},
    {"CKR_CRYPTOKI_NOT_INITIALIZED", CKR_CRYPTOKI_NOT_INITIALIZED},
};

// ---- Loading ----

static void load_real(void) {
    const char *path = getenv("KMSD_FAULT_SHIM_MODULE");
    if (path == NULL || *path == '\0') {
        fprintf(stderr, "PKCS11FaultShim: KMSD_FAULT_SHIM_MODULE is not set\n");
        load_error = CKR_GENERAL_ERROR;
        return;
    }
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        fprintf(stderr, "PKCS11FaultShim: cannot load %s: %s\n", path, dlerror());
        load_error = CKR_GENERAL_ERROR;
        return;
    }
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(handle, "C_GetFunctionList");
    if (get == NULL || get(&real) != CKR_OK || real == NULL) {
        fprintf(stderr, "PKCS11FaultShim: %s has no usable C_GetFunctionList\n", path);
        real = NULL;
        load_error = CKR_GENERAL_ERROR;
        return;
    }
    const char *control = getenv("KMSD_FAULT_SHIM_CONTROL");
    if (control != NULL && *control != '\0') {
        snprintf(control_path, sizeof control_path, "%s", control);
    } else {
        Dl_info info;
        if (dladdr((void *)&load_real, &info) != 0 && info.dli_fname != NULL) {
            snprintf(control_path, sizeof control_path, "%s.control", info.dli_fname);
        }
    }
    snprintf(status_path, sizeof status_path, "%s.status", control_path);
}

// ---- Status ----

static void write_status_locked(void) {
    if (!status_dirty || status_path[0] == '\0') return;
    status_dirty = 0;
    size_t open = 0;
    for (size_t i = 0; i < session_count; i++) open += sessions[i].alive ? 1 : 0;
    char temporary[PATH_MAX + 32];
    snprintf(temporary, sizeof temporary, "%s.tmp", status_path);
    FILE *file = fopen(temporary, "w");
    if (file == NULL) return;
    fprintf(file,
            "faults_injected %ld\ndead_session_calls %ld\nsessions_open %zu\ninitialize_calls %ld\n"
            "finalize_calls %ld\nlogin_calls %ld\ndown %d\n",
            faults_injected, dead_session_calls, open, initialize_calls, finalize_calls, login_calls, down);
    fclose(file);
    rename(temporary, status_path);
}

// ---- Control file ----

static int parse_value(const char *text, CK_RV *value) {
    for (size_t i = 0; i < sizeof value_names / sizeof value_names[0]; i++) {
        if (strcmp(text, value_names[i].name) == 0) {
            *value = value_names[i].value;
            return 1;
        }
    }
    char *end = NULL;
    errno = 0;
    unsigned long parsed = strtoul(text, &end, 0);
    if (errno != 0 || end == text || *end != '\0') return 0;
    *value = parsed;
    return 1;
}

static void close_all_sessions_locked(void) {
    for (size_t i = 0; i < session_count; i++) {
        if (sessions[i].alive) {
            real->C_CloseSession(sessions[i].real);
            sessions[i].alive = 0;
        }
    }
    status_dirty = 1;
}

static void apply_control_locked(FILE *file) {
    int was_down = down;
    rule_count = 0;
    hang_ms = 0;
    hang_function[0] = '\0';
    down = 0;
    kill_remaining = 0;
    int drop_login = 0;
    char line[512];
    while (file != NULL && fgets(line, sizeof line, file) != NULL) {
        char *hash = strchr(line, '#');
        if (hash != NULL) *hash = '\0';
        char word[NAME_LEN] = {0}, a[NAME_LEN] = {0}, b[NAME_LEN] = {0}, c[NAME_LEN] = {0};
        int n = sscanf(line, "%47s %47s %47s %47s", word, a, b, c);
        if (n <= 0) continue;
        if (strcmp(word, "fail") == 0 && n >= 3 && rule_count < MAX_RULES) {
            struct rule *rule = &rules[rule_count];
            if (!parse_value(b, &rule->value)) {
                fprintf(stderr, "PKCS11FaultShim: unknown return value '%s'\n", b);
                continue;
            }
            snprintf(rule->function, sizeof rule->function, "%s", a);
            rule->remaining = n >= 4 ? strtol(c, NULL, 10) : -1;
            rule_count++;
        } else if (strcmp(word, "hang") == 0 && n >= 2) {
            hang_ms = strtol(a, NULL, 10);
            snprintf(hang_function, sizeof hang_function, "%s", n >= 3 ? b : "*");
        } else if (strcmp(word, "down") == 0) {
            down = 1;
        } else if (strcmp(word, "drop-login") == 0) {
            drop_login = 1;
        } else if (strcmp(word, "kill-sessions") == 0) {
            kill_remaining = n >= 2 ? strtol(a, NULL, 10) : 1;
        } else {
            fprintf(stderr, "PKCS11FaultShim: ignoring control line '%s'\n", word);
        }
    }
    if (down && !was_down) {
        // The device restarts: everything it knew about this application is gone.
        reinitialized_while_down = 0;
        if (real != NULL) close_all_sessions_locked();
    }
    if (drop_login && real != NULL) {
        for (size_t i = 0; i < session_count; i++) {
            if (sessions[i].alive) {
                real->C_Logout(sessions[i].real);
                break;
            }
        }
    }
    status_dirty = 1;
}

static void refresh_control_locked(void) {
    if (control_path[0] == '\0') return;
    // The content decides, not the file's time stamps: Linux keeps those at a few milliseconds' resolution, and a
    // test may rewrite the file faster than that. Writers add a unique comment line so a repeated command is seen.
    static char seen[8192];
    static size_t seen_length;
    char now[8192];
    size_t length = 0;
    FILE *file = fopen(control_path, "r");
    if (file != NULL) {
        length = fread(now, 1, sizeof now, file);
        fclose(file);
    }
    if (control_known && length == seen_length && memcmp(now, seen, length) == 0) return;
    control_known = 1;
    memcpy(seen, now, length);
    seen_length = length;
    FILE *stream = length > 0 ? fmemopen(now, length, "r") : NULL;
    apply_control_locked(stream);
    if (stream != NULL) fclose(stream);
}

// ---- The gate every call passes ----

static int matches(const char *pattern, const char *function) {
    return strcmp(pattern, "*") == 0 || strcmp(pattern, function) == 0;
}

/// Decides whether a call reaches the module. For session calls, translates the virtual handle in place.
static CK_RV gate(const char *function, enum kind kind, CK_SESSION_HANDLE *session, int closing) {
    if (pthread_once(&load_once, load_real) != 0 || real == NULL) return load_error ? load_error : CKR_GENERAL_ERROR;
    long sleep_ms = 0;
    CK_RV rv = CKR_OK;
    pthread_mutex_lock(&lock);
    refresh_control_locked();
    // Every C_Login that reaches the shim counts, answered or faulted: tests prove kmsd never retries a rejected PIN.
    if (strcmp(function, "C_Login") == 0) {
        login_calls++;
        status_dirty = 1;
    }
    if (!initialized) {
        rv = CKR_CRYPTOKI_NOT_INITIALIZED;
        goto done;
    }
    if (down) {
        faults_injected++;
        status_dirty = 1;
        rv = (reinitialized_while_down && kind == KIND_SLOT) ? CKR_SLOT_ID_INVALID : CKR_DEVICE_ERROR;
        goto done;
    }
    struct session *entry = NULL;
    if (kind == KIND_SESSION) {
        CK_SESSION_HANDLE handle = *session;
        if (handle == 0 || handle > session_count || !sessions[handle - 1].alive) {
            if (handle != 0 && handle <= session_count && !closing) {
                dead_session_calls++;
                status_dirty = 1;
            }
            rv = CKR_SESSION_HANDLE_INVALID;
            goto done;
        }
        entry = &sessions[handle - 1];
    }
    for (int i = 0; i < rule_count; i++) {
        struct rule *rule = &rules[i];
        if (rule->remaining != 0 && matches(rule->function, function)) {
            if (rule->remaining > 0) rule->remaining--;
            faults_injected++;
            status_dirty = 1;
            rv = rule->value;
            goto done;
        }
    }
    if (entry != NULL && kill_remaining > 0 && !closing) {
        kill_remaining--;
        real->C_CloseSession(entry->real);
        entry->alive = 0;
        faults_injected++;
        status_dirty = 1;
        rv = CKR_SESSION_HANDLE_INVALID;
        goto done;
    }
    if (entry != NULL) *session = entry->real;
    if (hang_ms > 0 && matches(hang_function, function)) sleep_ms = hang_ms;
done:
    write_status_locked();
    pthread_mutex_unlock(&lock);
    if (sleep_ms > 0) {
        struct timespec delay = {sleep_ms / 1000, (sleep_ms % 1000) * 1000000L};
        while (nanosleep(&delay, &delay) != 0 && errno == EINTR) {
        }
    }
    return rv;
}

// ---- Calls with their own rules ----

static CK_RV shim_C_Initialize(void *args) {
    if (pthread_once(&load_once, load_real) != 0 || real == NULL) return load_error ? load_error : CKR_GENERAL_ERROR;
    pthread_mutex_lock(&lock);
    refresh_control_locked();
    CK_RV rv = CKR_OK;
    if (initialized) {
        rv = CKR_CRYPTOKI_ALREADY_INITIALIZED;
    } else if (down) {
        // The library starts, but finds no device: the slot list is empty until the fault is cleared.
        reinitialized_while_down = 1;
    } else {
        rv = real->C_Initialize(args);
        if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) rv = CKR_OK; // shared with other users in the process
    }
    if (rv == CKR_OK) {
        initialized = 1;
        initialize_calls++;
        status_dirty = 1;
    }
    write_status_locked();
    pthread_mutex_unlock(&lock);
    return rv;
}

static CK_RV shim_C_Finalize(void *reserved) {
    (void)reserved;
    if (pthread_once(&load_once, load_real) != 0 || real == NULL) return load_error ? load_error : CKR_GENERAL_ERROR;
    pthread_mutex_lock(&lock);
    CK_RV rv = CKR_OK;
    if (!initialized) {
        rv = CKR_CRYPTOKI_NOT_INITIALIZED;
    } else {
        // Local: end this application's sessions (and so its login), leave the shared module initialized.
        close_all_sessions_locked();
        initialized = 0;
        finalize_calls++;
    }
    write_status_locked();
    pthread_mutex_unlock(&lock);
    return rv;
}

static CK_RV shim_C_GetSlotList(CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count) {
    pthread_mutex_lock(&lock);
    int hidden = initialized && down && reinitialized_while_down;
    pthread_mutex_unlock(&lock);
    if (hidden) {
        if (count == NULL) return CKR_ARGUMENTS_BAD;
        *count = 0;
        return CKR_OK;
    }
    CK_RV rv = gate("C_GetSlotList", KIND_PLAIN, NULL, 0);
    if (rv != CKR_OK) return rv;
    return real->C_GetSlotList(present, list, count);
}

static CK_RV shim_C_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR application, CK_NOTIFY notify,
                                CK_SESSION_HANDLE_PTR session) {
    CK_RV rv = gate("C_OpenSession", KIND_SLOT, NULL, 0);
    if (rv != CKR_OK) return rv;
    if (session == NULL) return CKR_ARGUMENTS_BAD;
    CK_SESSION_HANDLE handle = 0;
    rv = real->C_OpenSession(slot, flags, application, notify, &handle);
    if (rv != CKR_OK) return rv;
    pthread_mutex_lock(&lock);
    if (session_count == session_capacity) {
        size_t capacity = session_capacity ? session_capacity * 2 : 64;
        struct session *grown = realloc(sessions, capacity * sizeof *grown);
        if (grown == NULL) {
            pthread_mutex_unlock(&lock);
            real->C_CloseSession(handle);
            return CKR_HOST_MEMORY;
        }
        sessions = grown;
        session_capacity = capacity;
    }
    sessions[session_count] = (struct session){handle, slot, 1};
    session_count++;
    *session = session_count; // virtual handles start at 1 and are never reused
    status_dirty = 1;
    write_status_locked();
    pthread_mutex_unlock(&lock);
    return CKR_OK;
}

static CK_RV shim_C_CloseSession(CK_SESSION_HANDLE session) {
    CK_SESSION_HANDLE virtual_handle = session;
    CK_RV rv = gate("C_CloseSession", KIND_SESSION, &session, 1);
    if (rv != CKR_OK) return rv;
    rv = real->C_CloseSession(session);
    pthread_mutex_lock(&lock);
    sessions[virtual_handle - 1].alive = 0;
    status_dirty = 1;
    write_status_locked();
    pthread_mutex_unlock(&lock);
    return rv;
}

static CK_RV shim_C_CloseAllSessions(CK_SLOT_ID slot) {
    CK_RV rv = gate("C_CloseAllSessions", KIND_SLOT, NULL, 0);
    if (rv != CKR_OK) return rv;
    pthread_mutex_lock(&lock);
    // Only this shim's sessions: other users of the shared module keep theirs.
    for (size_t i = 0; i < session_count; i++) {
        if (sessions[i].alive && sessions[i].slot == slot) {
            real->C_CloseSession(sessions[i].real);
            sessions[i].alive = 0;
        }
    }
    status_dirty = 1;
    write_status_locked();
    pthread_mutex_unlock(&lock);
    return CKR_OK;
}

// ---- Everything else: the gate, then the module ----

#define PLAIN_CALL(name, params, args)                        \
    static CK_RV shim_##name params {                         \
        CK_RV rv = gate(#name, KIND_PLAIN, NULL, 0);          \
        return rv != CKR_OK ? rv : real->name args;           \
    }
#define SLOT_CALL(name, params, args)                         \
    static CK_RV shim_##name params {                         \
        CK_RV rv = gate(#name, KIND_SLOT, NULL, 0);           \
        return rv != CKR_OK ? rv : real->name args;           \
    }
#define SESSION_CALL(name, params, args)                      \
    static CK_RV shim_##name params {                         \
        CK_RV rv = gate(#name, KIND_SESSION, &session, 0);    \
        return rv != CKR_OK ? rv : real->name args;           \
    }

typedef unsigned char *BYTES;
typedef unsigned long *LENGTH;

PLAIN_CALL(C_GetInfo, (CK_INFO_PTR info), (info))
PLAIN_CALL(C_WaitForSlotEvent, (CK_FLAGS flags, CK_SLOT_ID_PTR slot, CK_VOID_PTR reserved), (flags, slot, reserved))
SLOT_CALL(C_GetSlotInfo, (CK_SLOT_ID slot, CK_SLOT_INFO_PTR info), (slot, info))
SLOT_CALL(C_GetTokenInfo, (CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info), (slot, info))
SLOT_CALL(C_GetMechanismList, (CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, LENGTH count), (slot, list, count))
SLOT_CALL(C_GetMechanismInfo, (CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info),
          (slot, type, info))
SLOT_CALL(C_InitToken, (CK_SLOT_ID slot, BYTES pin, CK_ULONG pin_len, BYTES label), (slot, pin, pin_len, label))
SESSION_CALL(C_InitPIN, (CK_SESSION_HANDLE session, BYTES pin, CK_ULONG len), (session, pin, len))
SESSION_CALL(C_SetPIN, (CK_SESSION_HANDLE session, BYTES old, CK_ULONG old_len, BYTES new, CK_ULONG new_len),
             (session, old, old_len, new, new_len))
SESSION_CALL(C_GetSessionInfo, (CK_SESSION_HANDLE session, CK_SESSION_INFO_PTR info), (session, info))
SESSION_CALL(C_GetOperationState, (CK_SESSION_HANDLE session, BYTES state, LENGTH len), (session, state, len))
SESSION_CALL(C_SetOperationState,
             (CK_SESSION_HANDLE session, BYTES state, CK_ULONG len, CK_OBJECT_HANDLE enc, CK_OBJECT_HANDLE auth),
             (session, state, len, enc, auth))
SESSION_CALL(C_Login, (CK_SESSION_HANDLE session, CK_USER_TYPE user, BYTES pin, CK_ULONG len),
             (session, user, pin, len))
SESSION_CALL(C_Logout, (CK_SESSION_HANDLE session), (session))
SESSION_CALL(C_CreateObject, (CK_SESSION_HANDLE session, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR o),
             (session, t, n, o))
SESSION_CALL(C_CopyObject,
             (CK_SESSION_HANDLE session, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR r),
             (session, o, t, n, r))
SESSION_CALL(C_DestroyObject, (CK_SESSION_HANDLE session, CK_OBJECT_HANDLE o), (session, o))
SESSION_CALL(C_GetObjectSize, (CK_SESSION_HANDLE session, CK_OBJECT_HANDLE o, LENGTH size), (session, o, size))
SESSION_CALL(C_GetAttributeValue, (CK_SESSION_HANDLE session, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n),
             (session, o, t, n))
SESSION_CALL(C_SetAttributeValue, (CK_SESSION_HANDLE session, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n),
             (session, o, t, n))
SESSION_CALL(C_FindObjectsInit, (CK_SESSION_HANDLE session, CK_ATTRIBUTE_PTR t, CK_ULONG n), (session, t, n))
SESSION_CALL(C_FindObjects, (CK_SESSION_HANDLE session, CK_OBJECT_HANDLE_PTR o, CK_ULONG max, LENGTH count),
             (session, o, max, count))
SESSION_CALL(C_FindObjectsFinal, (CK_SESSION_HANDLE session), (session))
SESSION_CALL(C_EncryptInit, (CK_SESSION_HANDLE session, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (session, m, k))
SESSION_CALL(C_Encrypt, (CK_SESSION_HANDLE session, BYTES in, CK_ULONG in_len, BYTES out, LENGTH out_len),
             (session, in, in_len, out, out_len))
SESSION_CALL(C_EncryptUpdate, (CK_SESSION_HANDLE session, BYTES in, CK_ULONG in_len, BYTES out, LENGTH out_len),
             (session, in, in_len, out, out_len))
SESSION_CALL(C_EncryptFinal, (CK_SESSION_HANDLE session, BYTES out, LENGTH out_len), (session, out, out_len))
SESSION_CALL(C_DecryptInit, (CK_SESSION_HANDLE session, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (session, m, k))
SESSION_CALL(C_Decrypt, (CK_SESSION_HANDLE session, BYTES in, CK_ULONG in_len, BYTES out, LENGTH out_len),
             (session, in, in_len, out, out_len))
SESSION_CALL(C_DecryptUpdate, (CK_SESSION_HANDLE session, BYTES in, CK_ULONG in_len, BYTES out, LENGTH out_len),
             (session, in, in_len, out, out_len))
SESSION_CALL(C_DecryptFinal, (CK_SESSION_HANDLE session, BYTES out, LENGTH out_len), (session, out, out_len))
SESSION_CALL(C_DigestInit, (CK_SESSION_HANDLE session, CK_MECHANISM_PTR m), (session, m))
SESSION_CALL(C_Digest, (CK_SESSION_HANDLE session, BYTES in, CK_ULONG in_len, BYTES out, LENGTH out_len),
             (session, in, in_len, out, out_len))
SESSION_CALL(C_DigestUpdate, (CK_SESSION_HANDLE session, BYTES in, CK_ULONG in_len), (session, in, in_len))
SESSION_CALL(C_DigestKey, (CK_SESSION_HANDLE session, CK_OBJECT_HANDLE k), (session, k))
SESSION_CALL(C_DigestFinal, (CK_SESSION_HANDLE session, BYTES out, LENGTH out_len), (session, out, out_len))
SESSION_CALL(C_SignInit, (CK_SESSION_HANDLE session, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (session, m, k))
SESSION_CALL(C_Sign, (CK_SESSION_HANDLE session, BYTES in, CK_ULONG in_len, BYTES out, LENGTH out_len),
             (session, in, in_len, out, out_len))
SESSION_CALL(C_SignUpdate, (CK_SESSION_HANDLE session, BYTES in, CK_ULONG in_len), (session, in, in_len))
SESSION_CALL(C_SignFinal, (CK_SESSION_HANDLE session, BYTES out, LENGTH out_len), (session, out, out_len))
SESSION_CALL(C_SignRecoverInit, (CK_SESSION_HANDLE session, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k),
             (session, m, k))
SESSION_CALL(C_SignRecover, (CK_SESSION_HANDLE session, BYTES in, CK_ULONG in_len, BYTES out, LENGTH out_len),
             (session, in, in_len, out, out_len))
SESSION_CALL(C_VerifyInit, (CK_SESSION_HANDLE session, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (session, m, k))
SESSION_CALL(C_Verify, (CK_SESSION_HANDLE session, BYTES in, CK_ULONG in_len, BYTES sig, CK_ULONG sig_len),
             (session, in, in_len, sig, sig_len))
SESSION_CALL(C_VerifyUpdate, (CK_SESSION_HANDLE session, BYTES in, CK_ULONG in_len), (session, in, in_len))
SESSION_CALL(C_VerifyFinal, (CK_SESSION_HANDLE session, BYTES sig, CK_ULONG sig_len), (session, sig, sig_len))
SESSION_CALL(C_VerifyRecoverInit, (CK_SESSION_HANDLE session, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k),
             (session, m, k))
SESSION_CALL(C_VerifyRecover, (CK_SESSION_HANDLE session, BYTES sig, CK_ULONG sig_len, BYTES out, LENGTH out_len),
             (session, sig, sig_len, out, out_len))
SESSION_CALL(C_DigestEncryptUpdate,
             (CK_SESSION_HANDLE session, BYTES in, CK_ULONG in_len, BYTES out, LENGTH out_len),
             (session, in, in_len, out, out_len))
SESSION_CALL(C_DecryptDigestUpdate,
             (CK_SESSION_HANDLE session, BYTES in, CK_ULONG in_len, BYTES out, LENGTH out_len),
             (session, in, in_len, out, out_len))
SESSION_CALL(C_SignEncryptUpdate,
             (CK_SESSION_HANDLE session, BYTES in, CK_ULONG in_len, BYTES out, LENGTH out_len),
             (session, in, in_len, out, out_len))
SESSION_CALL(C_DecryptVerifyUpdate,
             (CK_SESSION_HANDLE session, BYTES in, CK_ULONG in_len, BYTES out, LENGTH out_len),
             (session, in, in_len, out, out_len))
SESSION_CALL(C_GenerateKey,
             (CK_SESSION_HANDLE session, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR k),
             (session, m, t, n, k))
SESSION_CALL(C_GenerateKeyPair,
             (CK_SESSION_HANDLE session, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR pt, CK_ULONG pn, CK_ATTRIBUTE_PTR st,
              CK_ULONG sn, CK_OBJECT_HANDLE_PTR pk, CK_OBJECT_HANDLE_PTR sk),
             (session, m, pt, pn, st, sn, pk, sk))
SESSION_CALL(C_WrapKey,
             (CK_SESSION_HANDLE session, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE w, CK_OBJECT_HANDLE k, BYTES out,
              LENGTH out_len),
             (session, m, w, k, out, out_len))
SESSION_CALL(C_UnwrapKey,
             (CK_SESSION_HANDLE session, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE u, BYTES in, CK_ULONG in_len,
              CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR k),
             (session, m, u, in, in_len, t, n, k))
SESSION_CALL(C_DeriveKey,
             (CK_SESSION_HANDLE session, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR t, CK_ULONG n,
              CK_OBJECT_HANDLE_PTR k),
             (session, m, b, t, n, k))
SESSION_CALL(C_SeedRandom, (CK_SESSION_HANDLE session, BYTES seed, CK_ULONG len), (session, seed, len))
SESSION_CALL(C_GenerateRandom, (CK_SESSION_HANDLE session, BYTES out, CK_ULONG len), (session, out, len))
SESSION_CALL(C_GetFunctionStatus, (CK_SESSION_HANDLE session), (session))
SESSION_CALL(C_CancelFunction, (CK_SESSION_HANDLE session), (session))

static CK_RV shim_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list);

static CK_FUNCTION_LIST function_list = {
    {2, 40},
    shim_C_Initialize, shim_C_Finalize, shim_C_GetInfo, shim_C_GetFunctionList, shim_C_GetSlotList,
    shim_C_GetSlotInfo, shim_C_GetTokenInfo, shim_C_GetMechanismList, shim_C_GetMechanismInfo, shim_C_InitToken,
    shim_C_InitPIN, shim_C_SetPIN, shim_C_OpenSession, shim_C_CloseSession, shim_C_CloseAllSessions,
    shim_C_GetSessionInfo, shim_C_GetOperationState, shim_C_SetOperationState, shim_C_Login, shim_C_Logout,
    shim_C_CreateObject, shim_C_CopyObject, shim_C_DestroyObject, shim_C_GetObjectSize, shim_C_GetAttributeValue,
    shim_C_SetAttributeValue, shim_C_FindObjectsInit, shim_C_FindObjects, shim_C_FindObjectsFinal,
    shim_C_EncryptInit, shim_C_Encrypt, shim_C_EncryptUpdate, shim_C_EncryptFinal, shim_C_DecryptInit,
    shim_C_Decrypt, shim_C_DecryptUpdate, shim_C_DecryptFinal, shim_C_DigestInit, shim_C_Digest,
    shim_C_DigestUpdate, shim_C_DigestKey, shim_C_DigestFinal, shim_C_SignInit, shim_C_Sign, shim_C_SignUpdate,
    shim_C_SignFinal, shim_C_SignRecoverInit, shim_C_SignRecover, shim_C_VerifyInit, shim_C_Verify,
    shim_C_VerifyUpdate, shim_C_VerifyFinal, shim_C_VerifyRecoverInit, shim_C_VerifyRecover,
    shim_C_DigestEncryptUpdate, shim_C_DecryptDigestUpdate, shim_C_SignEncryptUpdate, shim_C_DecryptVerifyUpdate,
    shim_C_GenerateKey, shim_C_GenerateKeyPair, shim_C_WrapKey, shim_C_UnwrapKey, shim_C_DeriveKey,
    shim_C_SeedRandom, shim_C_GenerateRandom, shim_C_GetFunctionStatus, shim_C_CancelFunction,
    shim_C_WaitForSlotEvent,
};

static CK_RV shim_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list) {
    if (list == NULL) return CKR_ARGUMENTS_BAD;
    *list = &function_list;
    return CKR_OK;
}

__attribute__((visibility("default"))) CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list) {
    return shim_C_GetFunctionList(list);
}
