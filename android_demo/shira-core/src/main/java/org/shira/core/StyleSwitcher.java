package org.shira.core;

import java.io.FileNotFoundException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.Executor;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

/** Runs the demo's work off the UI thread: loading the base and the engine, patching, inference.
 *
 *  One worker thread does everything in order, so a patch never overlaps a run (neither engine synchronises
 *  its kernels with writes to its weights). Requests are coalesced, which is the slider's debounce: while a
 *  switch or a run is in progress, newer requests replace the waiting one, and only the latest is applied when
 *  the worker is free; dragging never queues a backlog. Results and errors are delivered through `ui` (the
 *  main thread's executor on Android), never after {@link #close()}.
 *
 *  Every switch reports three times, measured here around the calls: the switch (the patcher's plan and
 *  write, plus the engine's reload when it packed a changed weight at load), the first inference after it, and
 *  the steady inference (the median of up to {@link #STEADY_RUNS} further runs, made only while no newer
 *  request waits). */
public final class StyleSwitcher implements AutoCloseable {
    public static final int STEADY_RUNS = 3;

    /** What the loader hands the worker: the patcher over the engine's weights (PatchableBase.patcher), the
     *  engine, the photo as [3, size, size] floats, and the loaded styles. */
    public static final class Loaded {
        final WeightPatcher patcher; final StyleEngine engine; final float[] photo; final int size; final List<String> styles;

        public Loaded(WeightPatcher patcher, StyleEngine engine, float[] photo, int size, List<String> styles) {
            this.patcher = patcher; this.engine = engine; this.photo = photo; this.size = size;
            this.styles = Collections.unmodifiableList(new ArrayList<>(styles));
        }
    }

    /** Builds everything on the worker thread (assets, native libraries, sessions may be slow or fail). */
    public interface Loader { Loaded load() throws Exception; }

    /** One finished switch. `steadyMs` is NaN in the first delivery (the image after the first run) and set in
     *  the second, when the steady runs are done. */
    public static final class Result {
        public final Map<String, Double> scales;
        public final String rule, engine;
        public final int[] pixels;
        public final int size, patchedEntries;
        public final boolean reloaded;
        public final double switchMs, firstMs, steadyMs;

        Result(Map<String, Double> scales, String rule, String engine, int[] pixels, int size, int patched,
               boolean reloaded, double switchMs, double firstMs, double steadyMs) {
            this.scales = scales; this.rule = rule; this.engine = engine; this.pixels = pixels; this.size = size;
            this.patchedEntries = patched; this.reloaded = reloaded; this.switchMs = switchMs; this.firstMs = firstMs;
            this.steadyMs = steadyMs;
        }

        Result withSteady(double ms) {
            return new Result(scales, rule, engine, pixels, size, patchedEntries, reloaded, switchMs, firstMs, ms);
        }
    }

    public interface Listener {
        /** The engine and every style are loaded (names in load order). */
        void onReady(String engine, List<String> styles);
        void onResult(Result r);
        /** One line for the screen; the weights are as they were before the failed request. */
        void onError(String message);
    }

    private final Executor ui;
    private final Listener listener;
    private final ExecutorService worker;
    private Loaded loaded; // worker thread only
    private Map<String, Double> pending;
    private String pendingRule = "sum";
    private boolean queued, closed;

    public StyleSwitcher(Executor ui, Listener listener) {
        this.ui = ui;
        this.listener = listener;
        this.worker = Executors.newSingleThreadExecutor(r -> {
            Thread t = new Thread(r, "shira-switcher");
            t.setDaemon(true); // a forgotten close() never keeps the process alive
            return t;
        });
    }

    /** Load on the worker; then apply whatever was requested meanwhile. */
    public void start(Loader loader) {
        worker.execute(() -> {
            try {
                Loaded l = loader.load();
                synchronized (this) {
                    if (closed) { l.engine.close(); return; }
                    loaded = l;
                }
                deliver(() -> listener.onReady(l.engine.name(), l.styles));
            } catch (Throwable e) { // Errors too: a missing native library is an UnsatisfiedLinkError
                deliver(() -> listener.onError(describe(e)));
                return;
            }
            drain(); // whatever was requested before or during the load
        });
    }

    /** Ask for these adapters at these scales (empty: the base), combined by `rule` where they overlap.
     *  Returns at once; the latest request wins. */
    public void request(Map<String, Double> scales, String rule) {
        synchronized (this) {
            if (closed) return;
            pending = new LinkedHashMap<>(scales);
            pendingRule = rule;
            if (queued) return;
            queued = true;
        }
        try {
            worker.execute(this::drain);
        } catch (java.util.concurrent.RejectedExecutionException closedMeanwhile) {
            // close() ran on another thread between the check above and here: nothing left to do
        }
    }

    private void drain() {
        while (true) {
            Map<String, Double> scales;
            String rule;
            synchronized (this) {
                if (closed || pending == null || loaded == null) { queued = false; return; }
                scales = pending; rule = pendingRule; pending = null;
            }
            apply(scales, rule);
        }
    }

    private synchronized boolean newerWaiting() { return pending != null || closed; }

    private void apply(Map<String, Double> scales, String rule) {
        Loaded l = loaded;
        try {
            long t0 = System.nanoTime();
            Map<String, WeightPatcher.Plan> plans = l.patcher.plan(scales, rule); // refused: nothing written
            Set<String> changed = l.patcher.changedBy(plans);
            Map<String, int[]> touched = l.patcher.touchedBy(plans); // asked before the commit
            l.patcher.commit(plans);
            boolean reloaded = l.engine.weightsChanged(changed, touched);
            long t1 = System.nanoTime();
            float[] out = l.engine.run(l.photo, l.size);
            long t2 = System.nanoTime();
            Result first = new Result(Collections.unmodifiableMap(scales), rule, l.engine.name(),
                    Photos.toArgb(out, l.size), l.size, l.patcher.patchedEntries(), reloaded,
                    (t1 - t0) / 1e6, (t2 - t1) / 1e6, Double.NaN);
            deliver(() -> listener.onResult(first));
            double[] steady = new double[STEADY_RUNS];
            int n = 0;
            while (n < STEADY_RUNS && !newerWaiting()) {
                long s = System.nanoTime();
                l.engine.run(l.photo, l.size);
                steady[n++] = (System.nanoTime() - s) / 1e6;
            }
            if (n > 0) {
                double median = median(Arrays.copyOf(steady, n));
                deliver(() -> listener.onResult(first.withSteady(median)));
            }
        } catch (Throwable e) {
            deliver(() -> listener.onError(describe(e)));
        }
    }

    static double median(double[] v) {
        Arrays.sort(v);
        return v.length % 2 == 1 ? v[v.length / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
    }

    private void deliver(Runnable r) {
        ui.execute(() -> {
            synchronized (this) { if (closed) return; }
            r.run();
        });
    }

    /** Stop taking requests, drop the waiting one and close the engine on the worker after the job in progress
     *  (never concurrently with a run). Returns at once: safe on the UI thread in onDestroy. */
    @Override
    public void close() {
        synchronized (this) {
            if (closed) return;
            closed = true;
            pending = null;
        }
        worker.execute(() -> {
            Loaded l = loaded;
            loaded = null;
            if (l != null) l.engine.close();
        });
        worker.shutdown();
    }

    /** Block until close() has released the engine (tests, and hosts that must not exit early). */
    public boolean awaitClosed(long millis) throws InterruptedException {
        return worker.awaitTermination(millis, java.util.concurrent.TimeUnit.MILLISECONDS);
    }

    /** One line for the screen, naming what is missing where the cause is known. */
    public static String describe(Throwable e) {
        Throwable root = e;
        while (root.getCause() != null && root.getCause() != root) root = root.getCause();
        if (e instanceof UnsatisfiedLinkError || root instanceof UnsatisfiedLinkError)
            return "the engine's native library is missing from this APK for this phone's CPU ("
                    + root.getMessage() + "); build an APK that includes its ABI";
        if (e instanceof NoClassDefFoundError || e instanceof ExceptionInInitializerError)
            return "the engine could not start (" + e.getClass().getSimpleName() + ": " + e.getMessage()
                    + "); its native library is probably missing for this phone's CPU";
        if (e instanceof FileNotFoundException || root instanceof FileNotFoundException)
            return "missing asset " + root.getMessage() + ": run android_demo/stage_assets.sh, then rebuild the app";
        if (e instanceof OutOfMemoryError) return "out of memory: " + e.getMessage();
        if (e instanceof AdapterFormatException) return e.getMessage();
        String msg = e.getMessage() == null ? "" : e.getMessage().split("\n", 2)[0];
        return e.getClass().getSimpleName() + ": " + msg;
    }
}
