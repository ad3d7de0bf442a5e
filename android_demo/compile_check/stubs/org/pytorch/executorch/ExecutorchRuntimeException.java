// Signatures from pytorch/executorch main@cff6f4dd32 (version.txt 1.5.0, 2026-08-22; the snapshot has no v1.5.x tag, see compile_check/README.md)
// extension/android/executorch_android/src/main/java/org/pytorch/executorch/ExecutorchRuntimeException.kt (Kotlin `open class`; `val errorCode` is getErrorCode(); companion
// const vals and @JvmStatic makeExecutorchException are statics). Thrown by Module.loadMethod on failure.
// Compile-check stub: signatures only, no behaviour.
package org.pytorch.executorch;

public class ExecutorchRuntimeException extends RuntimeException {
    public static final int OK = 0x00;
    public static final int INTERNAL = 0x01;
    public static final int INVALID_STATE = 0x02;
    public static final int END_OF_METHOD = 0x03;
    public static final int ALREADY_LOADED = 0x04;
    public static final int NOT_SUPPORTED = 0x10;
    public static final int NOT_IMPLEMENTED = 0x11;
    public static final int INVALID_ARGUMENT = 0x12;
    public static final int INVALID_TYPE = 0x13;
    public static final int OPERATOR_MISSING = 0x14;
    public static final int REGISTRATION_EXCEEDING_MAX_KERNELS = 0x15;
    public static final int REGISTRATION_ALREADY_REGISTERED = 0x16;
    public static final int NOT_FOUND = 0x20;
    public static final int MEMORY_ALLOCATION_FAILED = 0x21;
    public static final int ACCESS_FAILED = 0x22;
    public static final int INVALID_PROGRAM = 0x23;
    public static final int INVALID_EXTERNAL_DATA = 0x24;
    public static final int OUT_OF_RESOURCES = 0x25;
    public static final int DELEGATE_INVALID_COMPATIBILITY = 0x30;
    public static final int DELEGATE_MEMORY_ALLOCATION_FAILED = 0x31;
    public static final int DELEGATE_INVALID_HANDLE = 0x32;

    public ExecutorchRuntimeException(int errorCode, String details) { throw new RuntimeException("Stub!"); }
    public ExecutorchRuntimeException(int errorCode, String details, Throwable cause) { throw new RuntimeException("Stub!"); }

    public final int getErrorCode() { throw new RuntimeException("Stub!"); }
    public final String getDetailedError() { throw new RuntimeException("Stub!"); }
    public static RuntimeException makeExecutorchException(int errorCode, String details) { throw new RuntimeException("Stub!"); }

    public static final class ExecutorchInvalidArgumentException extends ExecutorchRuntimeException {
        public ExecutorchInvalidArgumentException(String details) { super(INVALID_ARGUMENT, details); }
    }
}
