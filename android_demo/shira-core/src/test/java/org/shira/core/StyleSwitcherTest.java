package org.shira.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;

import java.io.FileNotFoundException;
import java.nio.FloatBuffer;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

import org.junit.Test;

/** The app's threading contract, on the real patcher over tests/vectors/patch: work off the calling thread,
 *  results delivered through the UI executor, requests coalesced (the slider's debounce), refusals that change
 *  nothing, and an engine closed once, on the worker, never during a run. */
public class StyleSwitcherTest {
    /** A stand-in engine (the real ones need Android's native libraries): its "image" is the checksum of the
     *  weights it sees, and it records every call and the threads they came from. */
    static final class RecordingEngine implements StyleEngine {
        final Map<String, FloatBuffer> weights;
        final List<String> calls = Collections.synchronizedList(new ArrayList<>());
        final Set<String> threads = Collections.synchronizedSet(new java.util.HashSet<>());
        final AtomicInteger inRun = new AtomicInteger(), overlaps = new AtomicInteger(), closes = new AtomicInteger();
        volatile CountDownLatch gate; // when set, the next run waits for it
        final CountDownLatch waiting = new CountDownLatch(1); // counted down when a run waits on the gate

        RecordingEngine(Map<String, FloatBuffer> weights) { this.weights = weights; }

        public String name() { return "recording"; }

        public float[] run(float[] chw, int size) throws Exception {
            if (inRun.incrementAndGet() > 1) overlaps.incrementAndGet();
            threads.add(Thread.currentThread().getName());
            CountDownLatch g = gate;
            if (g != null) { gate = null; waiting.countDown(); g.await(10, TimeUnit.SECONDS); }
            double sum = 0;
            for (FloatBuffer b : weights.values()) for (int i = 0; i < b.capacity(); i++) sum += b.get(i);
            calls.add("run");
            float[] out = new float[3 * size * size];
            java.util.Arrays.fill(out, (float) (sum - Math.floor(sum)));
            inRun.decrementAndGet();
            return out;
        }

        public boolean weightsChanged(Set<String> changed) {
            threads.add(Thread.currentThread().getName());
            calls.add("changed " + new java.util.TreeSet<>(changed));
            return false;
        }

        public void close() {
            threads.add(Thread.currentThread().getName());
            closes.incrementAndGet();
            calls.add("close");
        }
    }

    /** The "UI thread": tasks queue here and run only when the test drains them. */
    static final class UiQueue implements java.util.concurrent.Executor {
        final LinkedBlockingQueue<Runnable> tasks = new LinkedBlockingQueue<>();
        public void execute(Runnable r) { tasks.add(r); }

        void drainFor(long millis) throws InterruptedException {
            long end = System.currentTimeMillis() + millis;
            Runnable r;
            while ((r = tasks.poll(Math.max(1, end - System.currentTimeMillis()), TimeUnit.MILLISECONDS)) != null) r.run();
        }
    }

    static final class Seen implements StyleSwitcher.Listener {
        final List<StyleSwitcher.Result> results = new ArrayList<>();
        final List<String> errors = new ArrayList<>();
        final List<String> ready = new ArrayList<>();
        final Set<String> threads = new java.util.HashSet<>();
        public void onReady(String engine, List<String> styles) { ready.add(engine + " " + styles); threads.add(Thread.currentThread().getName()); }
        public void onResult(StyleSwitcher.Result r) { results.add(r); threads.add(Thread.currentThread().getName()); }
        public void onError(String m) { errors.add(m); threads.add(Thread.currentThread().getName()); }
    }

    /** A switcher started over the patch vectors' patcher and a recording engine, its UI a queue. */
    static final class Rig {
        final PatchVectors v;
        final RecordingEngine engine;
        final UiQueue ui = new UiQueue();
        final Seen seen = new Seen();
        final StyleSwitcher switcher = new StyleSwitcher(ui, seen);

        Rig() throws Exception {
            v = new PatchVectors();
            engine = new RecordingEngine(v.buffers);
            List<String> styles = new ArrayList<>(v.scales(1).keySet());
            switcher.start(() -> new StyleSwitcher.Loaded(v.patcher, engine, new float[3 * 4 * 4], 4, styles));
        }
    }

    @Test
    public void appliesOffTheUiThreadAndDeliversOnIt() throws Exception {
        Rig r = new Rig();
        r.switcher.request(r.v.scales(1), r.v.rule(1));
        r.ui.drainFor(1500);
        assertEquals(1, r.seen.ready.size());
        assertEquals(Collections.singleton(Thread.currentThread().getName()), r.seen.threads); // listener: UI thread only
        assertEquals(Collections.singleton("shira-switcher"), r.engine.threads); // engine: the worker only
        assertEquals(2, r.seen.results.size()); // the image after the first run, then the steady time
        StyleSwitcher.Result first = r.seen.results.get(0), steady = r.seen.results.get(1);
        assertTrue(Double.isNaN(first.steadyMs) && first.switchMs >= 0 && first.firstMs >= 0);
        assertTrue(steady.steadyMs >= 0 && steady.firstMs == first.firstMs);
        assertEquals(4 * 4, first.pixels.length);
        assertEquals(1 + StyleSwitcher.STEADY_RUNS, Collections.frequency(r.engine.calls, "run"));
        for (String b : r.v.buffers.keySet())
            assertArrayEquals(b, r.v.expected(1, b), CrossLanguageTest.bitsOf(r.v.buffers.get(b)));
        r.switcher.close();
        assertTrue(r.switcher.awaitClosed(5000));
        assertEquals(1, r.engine.closes.get());
        assertEquals(0, r.engine.overlaps.get());
    }

    @Test
    public void requestsArrivingDuringAWorkCollapseIntoTheLatest() throws Exception {
        Rig r = new Rig();
        r.ui.drainFor(300);
        assertEquals(1, r.seen.ready.size()); // loaded; now the slider is dragged
        CountDownLatch gate = new CountDownLatch(1);
        r.engine.gate = gate;
        r.switcher.request(r.v.scales(1), r.v.rule(1)); // its first run blocks on the gate
        assertTrue(r.engine.waiting.await(5, TimeUnit.SECONDS));
        int last = r.v.steps.size() - 2; // the last step before the final reset
        for (int k = 0; k < 40; k++) r.switcher.request(r.v.scales(1 + k % last), r.v.rule(1 + k % last)); // a dragged slider
        r.switcher.request(r.v.scales(last), r.v.rule(last));
        gate.countDown();
        r.ui.drainFor(2000);
        List<Map<String, Double>> applied = new ArrayList<>();
        for (StyleSwitcher.Result res : r.seen.results) if (Double.isNaN(res.steadyMs)) applied.add(res.scales);
        assertEquals("only the first and the latest request are applied: " + applied, 2, applied.size());
        assertEquals(r.v.scales(last), applied.get(1));
        for (String b : r.v.buffers.keySet())
            assertArrayEquals(b, r.v.expected(last, b), CrossLanguageTest.bitsOf(r.v.buffers.get(b)));
        assertEquals(0, r.engine.overlaps.get());
        r.switcher.close();
    }

    @Test
    public void aRefusedRequestIsReportedAndChangesNothing() throws Exception {
        Rig r = new Rig();
        r.switcher.request(r.v.scales(1), r.v.rule(1));
        r.ui.drainFor(1000);
        Map<String, int[]> before = new LinkedHashMap<>();
        for (String b : r.v.buffers.keySet()) before.put(b, CrossLanguageTest.bitsOf(r.v.buffers.get(b)));
        Map<String, Double> bad = new LinkedHashMap<>(r.v.scales(1));
        bad.put("no-such-style", 1.0);
        r.switcher.request(bad, "sum");
        r.ui.drainFor(500);
        assertEquals(1, r.seen.errors.size());
        assertTrue(r.seen.errors.get(0), r.seen.errors.get(0).contains("no-such-style is not loaded"));
        for (String b : r.v.buffers.keySet()) assertArrayEquals(b, before.get(b), CrossLanguageTest.bitsOf(r.v.buffers.get(b)));
        r.switcher.close();
    }

    @Test
    public void closeReleasesTheEngineOnceAfterTheRunInProgressAndDeliversNothingMore() throws Exception {
        Rig r = new Rig();
        CountDownLatch gate = new CountDownLatch(1);
        r.engine.gate = gate;
        r.switcher.request(r.v.scales(1), r.v.rule(1));
        assertTrue(r.engine.waiting.await(5, TimeUnit.SECONDS)); // the run is now waiting on the gate
        long t0 = System.nanoTime();
        r.switcher.close(); // from the "UI thread": must not wait for the run
        assertTrue((System.nanoTime() - t0) / 1e6 < 1000); // the gated run waits 10 s
        r.switcher.close(); // idempotent
        r.switcher.request(r.v.scales(2), r.v.rule(2)); // ignored
        assertEquals(0, r.engine.closes.get()); // not while the run is in progress
        gate.countDown();
        assertTrue(r.switcher.awaitClosed(5000));
        r.ui.drainFor(300);
        assertEquals(1, r.engine.closes.get());
        assertEquals("close", r.engine.calls.get(r.engine.calls.size() - 1));
        assertTrue(r.seen.results.isEmpty() && r.seen.errors.isEmpty()); // nothing reaches a destroyed screen
    }

    @Test
    public void aLoaderThatFailsGivesOneLineThatNamesTheCause() throws Exception {
        UiQueue ui = new UiQueue();
        Seen seen = new Seen();
        StyleSwitcher s = new StyleSwitcher(ui, seen);
        s.start(() -> { throw new UnsatisfiedLinkError("dlopen failed: library \"libonnxruntime.so\" not found"); });
        ui.drainFor(500);
        s.close();
        assertEquals(1, seen.errors.size());
        assertTrue(seen.errors.get(0), seen.errors.get(0).contains("native library is missing"));
        assertTrue(seen.errors.get(0).contains("libonnxruntime.so"));
        assertTrue(StyleSwitcher.describe(new FileNotFoundException("base/model.pte")).startsWith("missing asset base/model.pte"));
        assertFalse(StyleSwitcher.describe(new IllegalStateException("a\nb")).contains("\n"));
    }

    @Test
    public void photosOfAnyShapeBecomeACentredSquare() {
        // 4 x 2 photo: the centred 2 x 2 square is columns 1..2
        int[] px = {0xFF000000, 0xFFFF0000, 0xFF00FF00, 0xFF000000,
                    0xFF000000, 0xFF0000FF, 0xFFFFFFFF, 0xFF000000};
        float[] chw = Photos.squareChw(px, 4, 2, 2);
        assertArrayEquals(new float[]{1, 0, 0, 1, /* G */ 0, 1, 0, 1, /* B */ 0, 0, 1, 1}, chw, 0f);
        assertArrayEquals(new int[]{0xFFFF0000, 0xFF00FF00, 0xFF0000FF, 0xFFFFFFFF}, Photos.toArgb(chw, 2));
        float[] tall = Photos.squareChw(new int[]{0xFF102030, 0xFF102030, 0xFF405060}, 1, 3, 1); // the middle row
        assertArrayEquals(new float[]{0x10 / 255f, 0x20 / 255f, 0x30 / 255f}, tall, 1e-7f);
        assertArrayEquals(new int[]{0xFF00FF80}, Photos.toArgb(new float[]{-3f, 7f, 0.5f}, 1)); // clamped, rounded
        assertArrayEquals(new int[]{0xFF000000}, Photos.toArgb(new float[]{Float.NaN, 0f, 0f}, 1));
    }
}
