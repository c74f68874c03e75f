// PKCS11FaultShim: a pass-through PKCS#11 module for tests. It loads the real module named by
// KMSD_FAULT_SHIM_MODULE, forwards every call to it, and injects the faults listed in its control file.
//
// Control file: KMSD_FAULT_SHIM_CONTROL if set, else "<path of this library>.control" (so several copies of the
// library in one process each have their own). It is read on every call and applied when its content changed
// (replace it atomically; add a unique comment line to repeat a command). One command per line; '#' starts a
// comment; an empty or missing file means no faults:
//
//   fail <C_Function|*> <CKR_NAME|0xHEX|decimal> [count]   the next `count` matching calls (default: every one)
//                                                           return that value without reaching the module
//   hang <milliseconds> [C_Function|*]                      matching calls sleep, then go on to the module
//   down                                                    device down: every call returns CKR_DEVICE_ERROR; the
//                                                           module's sessions are closed; after C_Finalize and
//                                                           C_Initialize the slot list is empty
//   drop-login                                              log the application out of the token, once
//   kill-sessions [count]                                   the next `count` calls on a session (default 1) close
//                                                           it in the module and return CKR_SESSION_HANDLE_INVALID
//
// Session handles are virtual: the shim hands out its own numbers, never reused, so a closed or killed session
// stays invalid even when the module reuses its number. C_Finalize is local to the shim (it closes the shim's sessions
// and forgets its state) and does not finalize the shared module, so other users of the module in the process are
// not disturbed.
//
// Status: after any change worth observing, the shim rewrites "<control>.status" with lines "key value":
// faults_injected, dead_session_calls (calls on a session the shim had killed or closed, other than C_CloseSession),
// sessions_open, initialize_calls, finalize_calls.
#ifndef PKCS11_FAULT_SHIM_H
#define PKCS11_FAULT_SHIM_H
#endif
