/* libfake_edgetpu.so: a test stand-in for libedgetpu.so.1 (see docs/testing.md).
 *
 * It implements what edgetpud uses of the real library, and fails the way the real one does.
 * Each behaviour names the libedgetpu source it imitates (google-coral/libedgetpu at e35aed1;
 * paths relative to that repository); docs/testing.md has the same list as a table.
 *   - the TensorFlow Lite external-delegate plugin ABI (tflite_plugin_create_delegate /
 *     tflite_plugin_destroy_delegate: tflite/edgetpu_delegate_for_custom_op_tflite_plugin.cc),
 *     so tflite_runtime.load_delegate() runs its real path;
 *   - edgetpu_c.h (tflite/edgetpu_c.cc): edgetpu_list_devices() / edgetpu_free_devices(), read
 *     from sysfs, so under umockdev-wrapper it lists the testbed's accelerators in libedgetpu's
 *     order; edgetpu_create_delegate(type, path, options, n) / edgetpu_free_delegate();
 *     edgetpu_version(); edgetpu_verbosity().
 *
 * Harsh by default, as the real library is:
 *   - a failed open returns NULL and reports nothing through the plugin's error callback (all
 *     of libedgetpu's open failures are VLOG(1), silent by default);
 *   - one context per device path per process: a second open of an open path returns that
 *     context whatever its options (first options win), "usb"/"pci"/"" return any open one;
 *   - a device is owned by one process: the context holds the device node open and flock()ed,
 *     so another process's open returns NULL (busy), as does a node it may not open;
 *   - a USB accelerator that disappears (its sysfs node removed or replaced) while a context
 *     on it runs an invoke aborts the process with libedgetpu's LOG(FATAL) line (a context
 *     opened in firmware-download mode follows the test's firmware load once);
 *   - abort_invoke / wedge (below) abort the process / block an invoke until it is killed.
 *
 * Behaviour comes from a control file named by $FAKE_EDGETPU_CONTROL, re-read whenever it changes
 * (checked at create, prepare and every invoke), one `key=value` a line:
 *   mode=passthrough|simulate   passthrough claims no nodes (CPU kernels run, real outputs);
 *                               simulate claims the graph and fakes a TPU
 *   invoke_ms=2.6               simulated time per invoke (simulate mode); a device runs one
 *                               invoke at a time, and one queued behind another (a second
 *                               interpreter on the device) starts the moment that one ends
 *   swap_ms=0                   extra time when the parameter caching token differs from the last
 *                               one run on that device (simulate mode)
 *   open_ms=0                   extra time in create (firmware load)
 *   fail_open=<dev>,...         create returns NULL (silently, like every refused open)
 *   fail_prepare=<dev>,...      delegate Prepare fails (RuntimeError at Interpreter(...))
 *   abort_invoke=<dev>,...      a USB transfer fails during an invoke: LOG(FATAL) line, abort()
 *   abort_after=0               ... once this many invokes ran on that context in this process
 *   wedge=<dev>,...             the device wedges: this invoke and every later one on that
 *                               context block until the process dies (clearing the key does
 *                               not release them)
 *   once=0|1                    1: abort_invoke and wedge fire once per device over all
 *                               processes (marker file <control>.fired.<key>.<dev>)
 *   unplug=abort|ignore         abort (default): a USB device gone during an invoke aborts;
 *                               ignore: polite, the invoke completes (tests whose daemon runs
 *                               the runtime in its own process)
 *   polite modes kept for existing tests (docs/testing.md says which):
 *   fail_invoke=<dev>,...       invoke returns kTfLiteError (simulate mode)
 *   hang=<dev>,...              invoke blocks until <dev> leaves the list (simulate mode)
 * Lines starting with # are comments. $FAKE_EDGETPU_LOG=1 traces to stderr (what VLOG would say).
 * <dev> is a listed device's path basename ("2-3.1", "apex_0") or full path; "*" means all.
 * Every abort and wedge appends a line "<key> <dev> pid=<pid>" to <control>.events.
 *
 * Test hooks (ctypes.CDLL on the same path returns the handle load_delegate opened) are the
 * functions named fake_*() at the end of this file. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* ---- TensorFlow Lite C ABI (tensorflow/lite/core/c/common.h, TF 2.14; fields in order) ---- */

typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
typedef enum { kTfLiteMmapRo = 1 } TfLiteAllocationType;
typedef int TfLiteBufferHandle;

typedef struct TfLiteIntArray {
  int size;
  int data[];
} TfLiteIntArray;

typedef struct {
  float scale;
  int32_t zero_point;
} TfLiteQuantizationParams;

typedef struct {
  int type;
  void *params;
} TfLiteQuantization;

struct TfLiteDelegate;
struct TfLiteContext;
struct TfLiteRegistration;

typedef struct TfLiteTensor { /* complete: context->tensors is an array of these */
  int type;
  void *data;
  TfLiteIntArray *dims;
  TfLiteQuantizationParams params;
  int allocation_type;
  size_t bytes;
  const void *allocation;
  const char *name;
  struct TfLiteDelegate *delegate;
  TfLiteBufferHandle buffer_handle;
  bool data_is_stale;
  bool is_variable;
  TfLiteQuantization quantization;
  void *sparsity;
  const TfLiteIntArray *dims_signature;
} TfLiteTensor;

typedef struct TfLiteNode { /* prefix: only reached through pointers the runtime hands out */
  TfLiteIntArray *inputs;
  TfLiteIntArray *outputs;
  TfLiteIntArray *intermediates;
  TfLiteIntArray *temporaries;
  void *user_data;
  void *builtin_data;
  const void *custom_initial_data;
  int custom_initial_data_size;
} TfLiteNode;

typedef struct TfLiteRegistration { /* complete: passed by value to ReplaceNodeSubsets... */
  void *(*init)(struct TfLiteContext *, const char *, size_t);
  void (*free)(struct TfLiteContext *, void *);
  TfLiteStatus (*prepare)(struct TfLiteContext *, TfLiteNode *);
  TfLiteStatus (*invoke)(struct TfLiteContext *, TfLiteNode *);
  const char *(*profiling_string)(const struct TfLiteContext *, const TfLiteNode *);
  int32_t builtin_code;
  const char *custom_name;
  int version;
  void *registration_external;
  void *(*async_kernel)(struct TfLiteContext *, TfLiteNode *);
  uint64_t inplace_operator;
} TfLiteRegistration;

typedef struct TfLiteContext { /* prefix */
  size_t tensors_size;
  TfLiteStatus (*GetExecutionPlan)(struct TfLiteContext *, TfLiteIntArray **);
  TfLiteTensor *tensors;
  void *impl_;
  TfLiteStatus (*ResizeTensor)(struct TfLiteContext *, TfLiteTensor *, TfLiteIntArray *);
  void (*ReportError)(struct TfLiteContext *, const char *, ...);
  TfLiteStatus (*AddTensors)(struct TfLiteContext *, int, int *);
  TfLiteStatus (*GetNodeAndRegistration)(struct TfLiteContext *, int, TfLiteNode **,
                                         TfLiteRegistration **);
  TfLiteStatus (*ReplaceNodeSubsetsWithDelegateKernels)(struct TfLiteContext *, TfLiteRegistration,
                                                        const TfLiteIntArray *,
                                                        struct TfLiteDelegate *);
} TfLiteContext;

typedef struct TfLiteDelegateParams {
  struct TfLiteDelegate *delegate;
  TfLiteIntArray *nodes_to_replace;
  TfLiteIntArray *input_tensors;
  TfLiteIntArray *output_tensors;
} TfLiteDelegateParams;

typedef struct TfLiteDelegate {
  void *data_;
  TfLiteStatus (*Prepare)(TfLiteContext *, struct TfLiteDelegate *);
  TfLiteStatus (*CopyFromBufferHandle)(TfLiteContext *, struct TfLiteDelegate *,
                                       TfLiteBufferHandle, TfLiteTensor *);
  TfLiteStatus (*CopyToBufferHandle)(TfLiteContext *, struct TfLiteDelegate *, TfLiteBufferHandle,
                                     TfLiteTensor *);
  void (*FreeBufferHandle)(TfLiteContext *, struct TfLiteDelegate *, TfLiteBufferHandle *);
  int64_t flags;
  void *opaque_delegate_builder; /* must stay NULL, else the runtime ignores Prepare */
} TfLiteDelegate;

/* ---- edgetpu_c.h ---- */

enum edgetpu_device_type { EDGETPU_APEX_PCI = 0, EDGETPU_APEX_USB = 1 };

struct edgetpu_device {
  enum edgetpu_device_type type;
  const char *path;
};

struct edgetpu_option {
  const char *name;
  const char *value;
};

/* ---- control file ---- */

#define LIST_LEN 1024
#define PATH_LEN 256

typedef struct {
  bool simulate, once, unplug_ignore;
  double invoke_ms, swap_ms, open_ms;
  long abort_after;
  char fail_open[LIST_LEN], fail_prepare[LIST_LEN], fail_invoke[LIST_LEN], hang[LIST_LEN];
  char abort_invoke[LIST_LEN], wedge[LIST_LEN];
} Control;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER; /* guards everything below */
static Control g_ctl = {.invoke_ms = 2.6};
static char g_ctl_path[PATH_LEN];
static struct stat g_ctl_stat;
static bool g_ctl_loaded;

static void control_defaults(Control *c) {
  memset(c, 0, sizeof *c);
  c->invoke_ms = 2.6;
}

static char *strip(char *s) {
  while (*s == ' ' || *s == '\t') s++;
  size_t n = strlen(s);
  while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
    s[--n] = '\0';
  return s;
}

static void control_parse(FILE *f, const char *path, Control *c) {
  char line[LIST_LEN + 64];
  int lineno = 0;
  while (fgets(line, sizeof line, f)) {
    lineno++;
    char *s = strip(line);
    if (!*s || *s == '#') continue;
    char *eq = strchr(s, '=');
    if (!eq) {
      fprintf(stderr, "fake_edgetpu: %s:%d: expected key=value, got '%s'\n", path, lineno, s);
      continue;
    }
    *eq = '\0';
    char *key = strip(s), *val = strip(eq + 1);
    if (strcmp(key, "mode") == 0) {
      if (strcmp(val, "simulate") != 0 && strcmp(val, "passthrough") != 0)
        fprintf(stderr, "fake_edgetpu: %s:%d: mode must be passthrough or simulate\n", path,
                lineno);
      c->simulate = strcmp(val, "simulate") == 0;
    } else if (strcmp(key, "invoke_ms") == 0) {
      c->invoke_ms = atof(val);
    } else if (strcmp(key, "swap_ms") == 0) {
      c->swap_ms = atof(val);
    } else if (strcmp(key, "open_ms") == 0) {
      c->open_ms = atof(val);
    } else if (strcmp(key, "fail_open") == 0) {
      snprintf(c->fail_open, sizeof c->fail_open, "%s", val);
    } else if (strcmp(key, "fail_prepare") == 0) {
      snprintf(c->fail_prepare, sizeof c->fail_prepare, "%s", val);
    } else if (strcmp(key, "fail_invoke") == 0) {
      snprintf(c->fail_invoke, sizeof c->fail_invoke, "%s", val);
    } else if (strcmp(key, "hang") == 0) {
      snprintf(c->hang, sizeof c->hang, "%s", val);
    } else if (strcmp(key, "abort_invoke") == 0) {
      snprintf(c->abort_invoke, sizeof c->abort_invoke, "%s", val);
    } else if (strcmp(key, "abort_after") == 0) {
      c->abort_after = atol(val);
    } else if (strcmp(key, "wedge") == 0) {
      snprintf(c->wedge, sizeof c->wedge, "%s", val);
    } else if (strcmp(key, "once") == 0) {
      c->once = strcmp(val, "1") == 0;
    } else if (strcmp(key, "unplug") == 0) {
      if (strcmp(val, "abort") != 0 && strcmp(val, "ignore") != 0)
        fprintf(stderr, "fake_edgetpu: %s:%d: unplug must be abort or ignore\n", path, lineno);
      c->unplug_ignore = strcmp(val, "ignore") == 0;
    } else {
      fprintf(stderr, "fake_edgetpu: %s:%d: unknown key '%s'\n", path, lineno, key);
    }
  }
}

/* Re-read the control file if its name, inode, size or mtime changed. Caller holds g_lock. */
static void control_refresh_locked(void) {
  const char *path = getenv("FAKE_EDGETPU_CONTROL");
  struct stat st;
  if (!path || !*path || stat(path, &st) != 0) {
    if (g_ctl_loaded || g_ctl_path[0]) control_defaults(&g_ctl);
    g_ctl_loaded = false;
    g_ctl_path[0] = '\0';
    return;
  }
  if (g_ctl_loaded && strcmp(path, g_ctl_path) == 0 && st.st_ino == g_ctl_stat.st_ino &&
      st.st_size == g_ctl_stat.st_size && st.st_mtim.tv_sec == g_ctl_stat.st_mtim.tv_sec &&
      st.st_mtim.tv_nsec == g_ctl_stat.st_mtim.tv_nsec)
    return;
  Control c;
  control_defaults(&c);
  FILE *f = fopen(path, "r");
  if (!f) return; /* vanished between stat and open: keep the old settings, retry next time */
  control_parse(f, path, &c);
  fclose(f);
  g_ctl = c;
  g_ctl_stat = st;
  g_ctl_loaded = true;
  snprintf(g_ctl_path, sizeof g_ctl_path, "%s", path);
}

static void control_snapshot(Control *out) {
  pthread_mutex_lock(&g_lock);
  control_refresh_locked();
  *out = g_ctl;
  pthread_mutex_unlock(&g_lock);
}

static const char *base_name(const char *path) {
  const char *slash = strrchr(path, '/');
  return slash ? slash + 1 : path;
}

/* Is the device at `path` named in the comma-separated list? ("*" = every device) */
static bool listed(const char *list, const char *path) {
  const char *name = base_name(path);
  for (const char *p = list; *p;) {
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    while (len && *p == ' ') p++, len--;
    while (len && p[len - 1] == ' ') len--;
    if ((len == 1 && *p == '*') || (len == strlen(name) && strncmp(p, name, len) == 0) ||
        (len == strlen(path) && strncmp(p, path, len) == 0))
      return true;
    if (!comma) break;
    p = comma + 1;
  }
  return false;
}

/* $FAKE_EDGETPU_LOG=1: trace to stderr. */
__attribute__((format(printf, 1, 2))) static void trace(const char *fmt, ...) {
  if (!getenv("FAKE_EDGETPU_LOG")) return;
  va_list ap;
  va_start(ap, fmt);
  fputs("fake_edgetpu: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

/* Append "<what> <dev> pid=<pid>" to <control>.events: how a test learns a fault fired in a
 * process it cannot ask (one write(2) with O_APPEND, so lines from processes never mix). */
static void log_event(const char *what, const char *path) {
  const char *ctl = getenv("FAKE_EDGETPU_CONTROL");
  if (!ctl || !*ctl) return;
  char name[PATH_LEN + 16], line[PATH_LEN + 64];
  snprintf(name, sizeof name, "%s.events", ctl);
  int n = snprintf(line, sizeof line, "%s %s pid=%d\n", what, base_name(path), (int)getpid());
  int fd = open(name, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return;
  if (write(fd, line, (size_t)n) < 0) { /* nothing to do: the abort follows anyway */
  }
  close(fd);
}

/* With once=1, may fault `key` fire on `path`? The first process to create
 * <control>.fired.<key>.<dev> wins; every later check (any process) says no. */
static bool fire(const Control *c, const char *key, const char *path) {
  const char *ctl = getenv("FAKE_EDGETPU_CONTROL");
  if (!c->once || !ctl || !*ctl) return true;
  char name[PATH_LEN * 2];
  snprintf(name, sizeof name, "%s.fired.%s.%s", ctl, key, base_name(path));
  int fd = open(name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  close(fd);
  return true;
}

/* LOG(FATAL) as libedgetpu prints it (port/default/port_from_tf/logging.cc,
 * LogMessage::GenerateLogMessage: "%c %s:%d] %s\n" with 'F', then std::abort()). */
__attribute__((noreturn, format(printf, 3, 4))) static void fatal(const char *file, int line,
                                                                  const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "F %s:%d] %s\n", file, line, msg);
  fflush(stderr);
  abort();
}

/* `t` plus `ms` milliseconds. */
static struct timespec plus_ms(struct timespec t, double ms) {
  long long ns = t.tv_nsec + (long long)(ms * 1e6);
  t.tv_sec += (time_t)(ns / 1000000000LL);
  t.tv_nsec = (long)(ns % 1000000000LL);
  return t;
}

/* Sleep until `ms` after `start` (a CLOCK_MONOTONIC time): the library's own work since
 * `start` counts inside the simulated time instead of adding to it. */
static void sleep_from(struct timespec start, double ms) {
  if (ms <= 0) return;
  /* Wake the caller when the simulated run ends, not up to the kernel's default 50 us of
   * timer slack later: the stated invoke time is then what the caller sees, give or take
   * the machine's own wake-up latency. Set once per calling thread. */
  static __thread bool precise;
  if (!precise) {
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    precise = true;
  }
  struct timespec until = plus_ms(start, ms);
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR) {
  }
}

static void sleep_ms(double ms) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  sleep_from(now, ms);
}

/* ---- device listing (sysfs; umockdev redirects /sys) ---- */

#define MAX_DEVICES 64

typedef struct {
  enum edgetpu_device_type type;
  char path[PATH_LEN];
} Found;

static bool read_attr(const char *dir, const char *name, const char *attr, char *out, size_t n) {
  char p[PATH_LEN * 2];
  snprintf(p, sizeof p, "%s/%s/%s", dir, name, attr);
  FILE *f = fopen(p, "r");
  if (!f) return false;
  bool ok = fgets(out, (int)n, f) != NULL;
  fclose(f);
  if (ok) strip(out);
  return ok;
}

/* USB accelerators in firmware-download mode first, then ready ones
 * (driver/beagle/beagle_usb_driver_provider.cc, BeagleUsbDriverProvider::Enumerate: the
 * 1a6e:089a list, then the 18d1:9302 list, each named "/sys/bus/usb/devices/<port path>" by
 * driver/usb/local_usb_device.cc, EnumerateDevices), then PCIe modules in readdir order of
 * /sys/class/apex (driver/driver_factory.cc, EnumerateSysfs); within each group, readdir order
 * (like libedgetpu's libusb device list: not stable). A finished firmware load moves a device
 * from the first group to the second, so the indices of the others change. */
static size_t find_devices(Found *out, size_t cap) {
  size_t n = 0;
  static const char *const usb_ids[2][2] = {{"1a6e", "089a"}, {"18d1", "9302"}};
  for (int pass = 0; pass < 2; pass++) {
    DIR *d = opendir("/sys/bus/usb/devices");
    if (!d) break;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < cap) {
      if (e->d_name[0] == '.' || strchr(e->d_name, ':')) continue; /* skip interfaces */
      char vid[16], pid[16];
      if (!read_attr("/sys/bus/usb/devices", e->d_name, "idVendor", vid, sizeof vid) ||
          !read_attr("/sys/bus/usb/devices", e->d_name, "idProduct", pid, sizeof pid))
        continue;
      if (strcmp(vid, usb_ids[pass][0]) != 0 || strcmp(pid, usb_ids[pass][1]) != 0) continue;
      out[n].type = EDGETPU_APEX_USB;
      snprintf(out[n].path, PATH_LEN, "/sys/bus/usb/devices/%.200s", e->d_name);
      n++;
    }
    closedir(d);
  }
  DIR *d = opendir("/sys/class/apex");
  if (d) {
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < cap) {
      if (e->d_name[0] == '.') continue;
      out[n].type = EDGETPU_APEX_PCI;
      snprintf(out[n].path, PATH_LEN, "/dev/%.200s", e->d_name);
      n++;
    }
    closedir(d);
  }
  return n;
}

/* tflite/edgetpu_c.cc, edgetpu_list_devices: one allocation, the array then the strings. */
struct edgetpu_device *edgetpu_list_devices(size_t *num_devices) {
  Found found[MAX_DEVICES];
  size_t n = find_devices(found, MAX_DEVICES);
  if (num_devices) *num_devices = n;
  if (n == 0) return NULL;
  /* One block: the array, then the path strings; edgetpu_free_devices() frees it at once. */
  struct edgetpu_device *devs = malloc(n * (sizeof *devs + PATH_LEN));
  if (!devs) {
    if (num_devices) *num_devices = 0;
    return NULL;
  }
  char *strings = (char *)(devs + n);
  for (size_t i = 0; i < n; i++) {
    char *s = strings + i * PATH_LEN;
    memcpy(s, found[i].path, PATH_LEN);
    devs[i].type = found[i].type;
    devs[i].path = s;
  }
  return devs;
}

void edgetpu_free_devices(struct edgetpu_device *dev) { free(dev); }

/* ---- per-device state ---- */

typedef struct {
  char path[PATH_LEN];
  struct timespec done; /* when the last run reserved on it ends (0 before the first) */
  bool has_token;
  uint64_t token;
  long invokes, swaps;
  int hanging;
} DevState;

static DevState g_devs[MAX_DEVICES];
static size_t g_ndevs;
static int g_created, g_destroyed;
static char g_last_device[PATH_LEN];
static uint64_t g_last_token;

static DevState *dev_state_locked(const char *path) {
  for (size_t i = 0; i < g_ndevs; i++)
    if (strcmp(g_devs[i].path, path) == 0) return &g_devs[i];
  if (g_ndevs == MAX_DEVICES) return &g_devs[MAX_DEVICES - 1];
  DevState *s = &g_devs[g_ndevs++];
  snprintf(s->path, PATH_LEN, "%s", path);
  return s;
}

static DevState *dev_find_locked(const char *dev) {
  for (size_t i = 0; i < g_ndevs; i++)
    if (strcmp(g_devs[i].path, dev) == 0 || strcmp(base_name(g_devs[i].path), dev) == 0)
      return &g_devs[i];
  return NULL;
}

/* ---- contexts: one per device path per process (tflite/edgetpu_manager_direct.cc) ---- */

#define OPTIONS_LEN 256

typedef struct {
  bool used;
  enum edgetpu_device_type type;
  char path[PATH_LEN];
  char node[PATH_LEN];      /* /dev/bus/usb/BBB/DDD or /dev/apex_N, held open while in use */
  char options[OPTIONS_LEN]; /* "k=v;..." of the open that made it: later opens' are ignored */
  int fd;                   /* the node, flock()ed: another process's open finds it busy */
  int refs;                 /* delegates on it; released at 0 (ReleaseEdgeTpuContext) */
  dev_t sys_dev;            /* identity of its sysfs node at open: a replug is another device */
  ino_t sys_ino;
  bool wedged;
  bool loading;             /* opened in firmware-download mode: the load is still to come */
  long invokes; /* invokes started on it in this process (abort_after counts these) */
} Context;

static Context g_ctx[MAX_DEVICES];
static int g_opened; /* contexts actually opened (not shared) since load or fake_reset() */

typedef struct {
  char option[64]; /* the `device` option as given ("" through edgetpu_create_delegate) */
  Context *ctx;    /* the shared context it runs on */
} FakeDelegate;

typedef struct {
  FakeDelegate *owner;
  uint64_t token;
} Kernel;

/* The device node libusb (driver/usb/local_usb_device.cc, LocalUsbDeviceFactory::OpenDevice ->
 * libusb_open) or the apex driver opens: /dev/bus/usb/BBB/DDD from sysfs busnum/devnum, or
 * /dev/apex_N. */
static bool device_node(enum edgetpu_device_type type, const char *path, char *node, size_t n) {
  if (type == EDGETPU_APEX_PCI) {
    snprintf(node, n, "/dev/%s", base_name(path));
    return true;
  }
  char bus[16], dev[16];
  if (!read_attr("/sys/bus/usb/devices", base_name(path), "busnum", bus, sizeof bus) ||
      !read_attr("/sys/bus/usb/devices", base_name(path), "devnum", dev, sizeof dev))
    return false;
  snprintf(node, n, "/dev/bus/usb/%03ld/%03ld", atol(bus), atol(dev));
  return true;
}

static bool sysfs_identity(const Context *c, dev_t *dev, ino_t *ino) {
  struct stat st;
  if (stat(c->path, &st) != 0) return false;
  *dev = st.st_dev;
  *ino = st.st_ino;
  return true;
}

/* Is the USB device this context opened still there, the same device? An unplug removes its
 * sysfs node; a replug (or a firmware reload) makes a new one. */
static bool in_dfu_mode(const char *path) {
  char vid[16], pid[16];
  return read_attr("/sys/bus/usb/devices", base_name(path), "idVendor", vid, sizeof vid) &&
         read_attr("/sys/bus/usb/devices", base_name(path), "idProduct", pid, sizeof pid) &&
         strcmp(vid, "1a6e") == 0 && strcmp(pid, "089a") == 0;
}

/* A context opened on a device in firmware-download mode follows it through its firmware load:
 * libedgetpu's open does the load itself and reopens the device when it comes back in
 * application mode on the same port (driver/usb/usb_driver.cc, UsbDriver::PrepareUsbDevice:
 * DFU, USB reset, then OpenMlUsbDevice). The fake loads nothing; the test's firmware_load()
 * (remove, then add as 18d1:9302) stands for it, once. Caller holds g_lock. */
static bool usb_present_locked(Context *c) {
  dev_t dev;
  ino_t ino;
  if (c->type != EDGETPU_APEX_USB) return true; /* apex hot-removal is not modelled */
  if (!sysfs_identity(c, &dev, &ino)) return false;
  if (dev == c->sys_dev && ino == c->sys_ino) return true;
  if (c->loading && !in_dfu_mode(c->path)) {
    trace("%s came back from its firmware load: the context follows it", c->path);
    c->loading = false;
    c->sys_dev = dev;
    c->sys_ino = ino;
    return true;
  }
  return false;
}

/* Is the device still there? For a context still `loading`, a device gone from sysfs is in
 * its firmware load's re-enumeration: wait for it as UsbDriver::CreateRawUsbDeviceWithRetry
 * does (kMaxNumOfRetryAfterReset = 25 tries, 1 s apart), here in 50 ms steps. */
static bool usb_present(Context *c) {
  for (int step = 0; step < 500; step++) {
    pthread_mutex_lock(&g_lock);
    bool present = usb_present_locked(c), loading = c->loading;
    pthread_mutex_unlock(&g_lock);
    if (present || !loading) return present;
    sleep_ms(50);
  }
  return false;
}

/* driver/usb/usb_driver.cc, UsbDriver::HandleQueuedBulkIn: a bulk-in transfer that failed for
 * a reason other than cancel/deadline is LOG(FATAL) -> abort(), the whole process. An unplug
 * fails it with LIBUSB_TRANSFER_NO_DEVICE, which local_usb_device.cc's
 * ConvertLibUsbTransferStatus turns into NotFoundError("USB transfer error 5 [...]"): the line
 * users report (Frigate #5559). */
__attribute__((noreturn)) static void die_unplugged(const Context *c) {
  log_event("unplug_abort", c->path);
  fatal("driver/usb/usb_driver.cc", 1148,
        "HandleQueuedBulkIn transfer in failed. Not found: USB transfer error 5 "
        "[LibUsbDataInCallback]");
}

/* The same LOG(FATAL) for any other failed transfer (a USB reset, a bus error):
 * LIBUSB_TRANSFER_ERROR -> UnknownError("USB transfer error 1 [...]"). */
__attribute__((noreturn)) static void die_transfer_error(const Context *c) {
  log_event("abort_invoke", c->path);
  fatal("driver/usb/usb_driver.cc", 1148,
        "HandleQueuedBulkIn transfer in failed. Unknown: USB transfer error 1 "
        "[LibUsbDataInCallback]");
}

/* Has a process claimed an interface of this USB device through usbfs? The kernel binds a
 * claimed interface to the "usbfs" driver (sysfs <port>:<cfg>.<n>/driver); libusb's claim in
 * LocalUsbDevice::ClaimInterface (driver/usb/local_usb_device.cc) then fails with
 * LIBUSB_ERROR_BUSY. The flock below models the holders we make; this models the others. */
static bool usb_interface_claimed(const char *path) {
  const char *name = base_name(path);
  size_t len = strlen(name);
  DIR *d = opendir("/sys/bus/usb/devices");
  if (!d) return false;
  bool claimed = false;
  struct dirent *e;
  while (!claimed && (e = readdir(d)) != NULL) {
    if (strncmp(e->d_name, name, len) != 0 || e->d_name[len] != ':') continue;
    char link[PATH_LEN * 2], target[PATH_LEN];
    snprintf(link, sizeof link, "/sys/bus/usb/devices/%s/driver", e->d_name);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) continue;
    target[n] = '\0';
    claimed = strcmp(base_name(target), "usbfs") == 0;
  }
  closedir(d);
  return claimed;
}

/* Every device listed now: type and path, libedgetpu's order. */
static bool listed_now(enum edgetpu_device_type type, const char *path) {
  Found found[MAX_DEVICES];
  size_t n = find_devices(found, MAX_DEVICES);
  for (size_t i = 0; i < n; i++)
    if (found[i].type == type && strcmp(found[i].path, path) == 0) return true;
  return false;
}

/* EdgeTpuManagerDirect::TryMatchDriverWrapper: an open context of this type (and path, unless
 * `path` is empty) is handed out again; "Note we don't check for compatibility in options". */
static Context *match_open_locked(enum edgetpu_device_type type, const char *path) {
  for (size_t i = 0; i < MAX_DEVICES; i++)
    if (g_ctx[i].used && g_ctx[i].type == type && (!*path || strcmp(g_ctx[i].path, path) == 0))
      return &g_ctx[i];
  return NULL;
}

/* EdgeTpuDriverWrapper::MakeOpenedDriver -> DriverFactory::CreateDriver -> Driver::Open: open
 * the device itself. NULL, silently (VLOG(1) only), when it is not there, when the node cannot
 * be opened (LIBUSB_ERROR_ACCESS -> PermissionDeniedError in local_usb_device.cc,
 * ConvertLibUsbError) or when another process holds it (libusb_claim_interface ->
 * LIBUSB_ERROR_BUSY in LocalUsbDevice::ClaimInterface; here an flock on the node). */
static Context *open_new_locked(enum edgetpu_device_type type, const char *path,
                                const char *options) {
  const Control *c = &g_ctl;
  if (!listed_now(type, path)) {
    trace("open %s: not listed", path);
    return NULL;
  }
  if (listed(c->fail_open, path)) {
    trace("open %s: fail_open", path);
    return NULL;
  }
  if (type == EDGETPU_APEX_USB && usb_interface_claimed(path)) {
    trace("open %s: its interface is claimed through usbfs by another process", path);
    return NULL;
  }
  Context *slot = NULL;
  for (size_t i = 0; i < MAX_DEVICES && !slot; i++)
    if (!g_ctx[i].used) slot = &g_ctx[i];
  if (!slot) return NULL;
  char node[PATH_LEN];
  if (!device_node(type, path, node, sizeof node)) {
    trace("open %s: no busnum/devnum in sysfs", path);
    return NULL;
  }
  int fd = open(node, O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    trace("open %s: %s: %s", path, node, strerror(errno));
    return NULL;
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    trace("open %s: %s is busy in another process (%s)", path, node, strerror(errno));
    close(fd);
    return NULL;
  }
  memset(slot, 0, sizeof *slot);
  slot->used = true;
  slot->type = type;
  slot->fd = fd;
  snprintf(slot->path, sizeof slot->path, "%s", path);
  snprintf(slot->node, sizeof slot->node, "%s", node);
  snprintf(slot->options, sizeof slot->options, "%s", options);
  slot->loading = type == EDGETPU_APEX_USB && in_dfu_mode(path);
  if (!sysfs_identity(slot, &slot->sys_dev, &slot->sys_ino)) {
    close(fd);
    slot->used = false;
    return NULL;
  }
  g_opened++;
  trace("opened %s (%s) options '%s'", path, node, options);
  return slot;
}

/* EdgeTpuManagerDirect::OpenDeviceInternal for one type: the open context of that path (or,
 * with no path, any open one of that type), else open `path` (or, with no path, the first
 * listed device of that type this process has not opened: FindPathToFirstUnopenedDevice). */
static Context *open_device_locked(enum edgetpu_device_type type, const char *path,
                                   const char *options) {
  Context *ctx = match_open_locked(type, path);
  if (ctx) {
    trace("open %s: sharing the open context on %s (its options '%s' stay)", path, ctx->path,
          ctx->options);
    ctx->refs++;
    return ctx;
  }
  char chosen[PATH_LEN] = "";
  if (*path) {
    snprintf(chosen, sizeof chosen, "%s", path);
  } else {
    Found found[MAX_DEVICES];
    size_t n = find_devices(found, MAX_DEVICES);
    for (size_t i = 0; i < n && !*chosen; i++)
      if (found[i].type == type && !match_open_locked(type, found[i].path))
        snprintf(chosen, sizeof chosen, "%s", found[i].path);
    if (!*chosen) return NULL;
  }
  ctx = open_new_locked(type, chosen, options);
  if (ctx) ctx->refs = 1;
  return ctx;
}

/* kApexAny (no type given): PCIe first, then USB (EdgeTpuManagerDirect::ExtendRequestDeviceType).
 * "Any" tries to share before it opens, over both types, like OpenDeviceInternal. */
static Context *open_any_locked(void) {
  static const enum edgetpu_device_type order[2] = {EDGETPU_APEX_PCI, EDGETPU_APEX_USB};
  for (int i = 0; i < 2; i++) {
    Context *ctx = match_open_locked(order[i], "");
    if (ctx) {
      ctx->refs++;
      return ctx;
    }
  }
  for (int i = 0; i < 2; i++) {
    Context *ctx = open_device_locked(order[i], "", "");
    if (ctx) return ctx;
  }
  return NULL;
}

/* EdgeTpuManagerDirect::ReleaseEdgeTpuContext: the last user closes the device. */
static void release_locked(Context *ctx) {
  if (!ctx || --ctx->refs > 0) return;
  trace("closing %s", ctx->path);
  close(ctx->fd); /* drops the flock */
  ctx->used = false;
}

/* The plugin's GetEdgeTpuContext (edgetpu_delegate_for_custom_op_tflite_plugin.cc): "" / no
 * device key -> any; "usb" / "pci" -> any of that type, options ignored; ":N" / "usb:N" /
 * "pci:N" -> the Nth of EnumerateEdgeTpu() (of that type), opened by path with the options. */
static Context *plugin_open_locked(const char *option, bool has_option, const char *options) {
  if (!has_option || !*option) return open_any_locked();
  if (strcmp(option, "usb") == 0) return open_device_locked(EDGETPU_APEX_USB, "", "");
  if (strcmp(option, "pci") == 0) return open_device_locked(EDGETPU_APEX_PCI, "", "");
  int want_type = -1;
  const char *index = option;
  if (strncmp(option, "usb:", 4) == 0) {
    want_type = EDGETPU_APEX_USB;
    index = option + 3;
  } else if (strncmp(option, "pci:", 4) == 0) {
    want_type = EDGETPU_APEX_PCI;
    index = option + 3;
  }
  if (*index != ':' || !index[1]) return NULL; /* MatchDevice fails: nullptr */
  char *end = NULL;
  long wanted = strtol(index + 1, &end, 10);
  if (*end || wanted < 0) return NULL;
  Found found[MAX_DEVICES];
  size_t n = find_devices(found, MAX_DEVICES);
  for (size_t i = 0; i < n; i++) {
    if (want_type >= 0 && (int)found[i].type != want_type) continue;
    if (wanted-- == 0) return open_device_locked(found[i].type, found[i].path, options);
  }
  trace("open '%s': no such Edge TPU (%zu listed)", option, n);
  return NULL;
}

static TfLiteStatus delegate_prepare(TfLiteContext *ctx, TfLiteDelegate *d);

/* CreateEdgeTpuDelegateForCustomOp: a new delegate on a (possibly shared) context. */
static TfLiteDelegate *make_delegate_locked(Context *ctx, const char *option) {
  FakeDelegate *fd = calloc(1, sizeof *fd);
  TfLiteDelegate *d = calloc(1, sizeof *d);
  if (!fd || !d) {
    free(fd);
    free(d);
    release_locked(ctx);
    return NULL;
  }
  snprintf(fd->option, sizeof fd->option, "%s", option);
  fd->ctx = ctx;
  d->data_ = fd;
  d->Prepare = delegate_prepare;
  /* kTfLiteDelegateFlagsAllowDynamicTensors: without it ModifyGraphWithDelegate first prepares
   * the whole graph, and an edgetpu-custom-op fails as unresolved before we can claim it. */
  d->flags = 1;
  g_created++;
  snprintf(g_last_device, sizeof g_last_device, "%s", ctx->path);
  dev_state_locked(ctx->path);
  trace("created delegate for device '%s' on %s", option, ctx->path);
  return d;
}

static void free_delegate(TfLiteDelegate *d) {
  if (!d) return;
  pthread_mutex_lock(&g_lock);
  g_destroyed++;
  release_locked(((FakeDelegate *)d->data_)->ctx);
  pthread_mutex_unlock(&g_lock);
  free(d->data_);
  free(d);
}

static uint64_t fnv1a(uint64_t h, const void *data, size_t len) {
  const uint8_t *p = data;
  for (size_t i = 0; i < len; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
  return h;
}

/* -- minimal FlexBuffer / FlatBuffer readers for the parameter caching token -- */

static bool rd_uint(const uint8_t *b, size_t len, size_t pos, unsigned width, uint64_t *out) {
  if (width == 0 || width > 8 || pos > len || len - pos < width) return false;
  uint64_t v = 0;
  for (unsigned i = 0; i < width; i++) v |= (uint64_t)b[pos + i] << (8 * i);
  *out = v;
  return true;
}

/* custom options = FlexBuffer map; return the bytes of the string/blob stored under `key`. */
static bool flex_map_bytes(const uint8_t *b, size_t len, const char *key, const uint8_t **out,
                           size_t *out_len) {
  uint64_t v, size, keys_off, keys_bw, ko, slen;
  if (len < 3) return false;
  unsigned root_bw = b[len - 1], root_type = b[len - 2];
  if (root_bw == 0 || root_bw > 8 || len < 2 + (size_t)root_bw) return false;
  if ((root_type >> 2) != 9) return false; /* FBT_MAP */
  size_t root_pos = len - 2 - root_bw;
  if (!rd_uint(b, len, root_pos, root_bw, &v) || v > root_pos) return false;
  size_t data = root_pos - v;
  unsigned bw = 1u << (root_type & 3);
  if (data < 3 * (size_t)bw) return false;
  if (!rd_uint(b, len, data - bw, bw, &size) || !rd_uint(b, len, data - 2 * bw, bw, &keys_bw) ||
      !rd_uint(b, len, data - 3 * bw, bw, &keys_off) || keys_off > data - 3 * bw)
    return false;
  size_t keys = data - 3 * bw - keys_off;
  if (size > len || data + size * (bw + 1) > len) return false;
  for (size_t i = 0; i < size; i++) {
    size_t kp = keys + i * keys_bw;
    if (!rd_uint(b, len, kp, (unsigned)keys_bw, &ko) || ko > kp) return false;
    const char *k = (const char *)b + (kp - ko);
    size_t room = len - (kp - ko);
    if (strnlen(k, room) == room || strcmp(k, key) != 0) continue;
    unsigned t = b[data + size * bw + i], vt = t >> 2, vbw = 1u << (t & 3);
    if (vt != 5 && vt != 25) return false; /* FBT_STRING, FBT_BLOB */
    size_t ep = data + i * bw;
    if (!rd_uint(b, len, ep, bw, &v) || v > ep) return false;
    size_t target = ep - v;
    if (target < vbw || !rd_uint(b, len, target - vbw, vbw, &slen) || slen > len - target)
      return false;
    *out = b + target;
    *out_len = slen;
    return true;
  }
  return false;
}

/* Absolute position of field `id` of the table at `table`, or 0 when absent. */
static size_t fb_field(const uint8_t *b, size_t len, size_t table, int id) {
  uint64_t soff, vt_size, off;
  if (!rd_uint(b, len, table, 4, &soff)) return 0;
  int64_t vt = (int64_t)table - (int32_t)(uint32_t)soff;
  if (vt < 0 || !rd_uint(b, len, (size_t)vt, 2, &vt_size)) return 0;
  size_t slot = 4 + 2 * (size_t)id;
  if (slot + 2 > vt_size || !rd_uint(b, len, (size_t)vt + slot, 2, &off) || off == 0) return 0;
  return table + off;
}

/* Follow the uoffset at `pos` to a vector/string: start of its data and its element count. */
static bool fb_vector(const uint8_t *b, size_t len, size_t pos, size_t *start, size_t *count) {
  uint64_t off, n;
  if (!pos || !rd_uint(b, len, pos, 4, &off) || !rd_uint(b, len, pos + off, 4, &n)) return false;
  *start = pos + off + 4;
  *count = n;
  return *start <= len && n <= len - *start;
}

static bool fb_root(const uint8_t *b, size_t len, size_t *table) {
  uint64_t off;
  if (!rd_uint(b, len, 0, 4, &off) || off >= len) return false;
  *table = off;
  return true;
}

/* Package (file id DWN1) -> field 1 serialized_multi_executable -> MultiExecutable field 0
 * serialized_executables -> each Executable field 14 parameter_caching_token (first non-zero). */
static uint64_t package_token(const uint8_t *pkg, size_t len) {
  size_t t, start, n, ms, mn, vs, vn, et;
  uint64_t token = 0;
  if (len < 8 || memcmp(pkg + 4, "DWN1", 4) != 0 || !fb_root(pkg, len, &t)) return 0;
  if (!fb_vector(pkg, len, fb_field(pkg, len, t, 1), &start, &n)) return 0;
  const uint8_t *multi = pkg + start;
  if (!fb_root(multi, n, &t) || !fb_vector(multi, n, fb_field(multi, n, t, 0), &ms, &mn))
    return 0;
  for (size_t i = 0; i < mn && !token; i++) {
    if (!fb_vector(multi, n, ms + 4 * i, &vs, &vn)) return 0;
    const uint8_t *exe = multi + vs;
    if (!fb_root(exe, vn, &et)) continue;
    size_t f = fb_field(exe, vn, et, 14);
    if (f) rd_uint(exe, vn, f, 8, &token);
  }
  return token;
}

static uint64_t node_token(const TfLiteNode *node) {
  const uint8_t *data = node->custom_initial_data, *pkg;
  size_t len = node->custom_initial_data_size > 0 ? (size_t)node->custom_initial_data_size : 0;
  size_t pkg_len;
  if (!data || !len) return 0;
  if (flex_map_bytes(data, len, "4", &pkg, &pkg_len)) {
    uint64_t token = package_token(pkg, pkg_len);
    if (token) return token;
  }
  return fnv1a(0xcbf29ce484222325ULL, data, len); /* unparsable: still distinct per model */
}

static const char kEdgeTpuOp[] = "edgetpu-custom-op";

static void *kernel_init(TfLiteContext *ctx, const char *buffer, size_t length) {
  (void)length;
  const TfLiteDelegateParams *params = (const TfLiteDelegateParams *)buffer;
  Kernel *k = calloc(1, sizeof *k);
  if (!k) return NULL;
  k->owner = params->delegate->data_;
  uint64_t hash = 0xcbf29ce484222325ULL;
  for (int i = 0; i < params->nodes_to_replace->size; i++) {
    TfLiteNode *node;
    TfLiteRegistration *reg;
    if (ctx->GetNodeAndRegistration(ctx, params->nodes_to_replace->data[i], &node, &reg) !=
        kTfLiteOk)
      continue;
    if (reg->custom_name && strcmp(reg->custom_name, kEdgeTpuOp) == 0) {
      if (!k->token) k->token = node_token(node);
      continue;
    }
    /* a plain CPU graph: its "token" is a hash of its ops and their output sizes */
    hash = fnv1a(hash, &reg->builtin_code, sizeof reg->builtin_code);
    for (int j = 0; j < node->outputs->size; j++)
      if (node->outputs->data[j] >= 0)
        hash = fnv1a(hash, &ctx->tensors[node->outputs->data[j]].bytes, sizeof(size_t));
  }
  if (!k->token) k->token = hash;
  pthread_mutex_lock(&g_lock);
  g_last_token = k->token;
  pthread_mutex_unlock(&g_lock);
  return k;
}

static void kernel_free(TfLiteContext *ctx, void *buffer) {
  (void)ctx;
  free(buffer);
}

static TfLiteStatus kernel_prepare(TfLiteContext *ctx, TfLiteNode *node) {
  (void)ctx;
  return node->user_data ? kTfLiteOk : kTfLiteError;
}

/* The sum of n bytes; with SSE2 16 at a time (psadbw), as the byte loop cost ~30 us per
 * 49 KB input on the benchmark machine: CPU a real Edge TPU does not take from the host. */
static uint64_t sum_bytes(const uint8_t *p, size_t n) {
  uint64_t s = 0;
  size_t j = 0;
#ifdef __SSE2__
  const __m128i zero = _mm_setzero_si128();
  __m128i acc = zero;
  for (; j + 16 <= n; j += 16)
    acc = _mm_add_epi64(acc, _mm_sad_epu8(_mm_loadu_si128((const __m128i *)(p + j)), zero));
  uint64_t lanes[2];
  _mm_storeu_si128((__m128i *)lanes, acc);
  s = lanes[0] + lanes[1];
#endif
  for (; j < n; j++) s += p[j];
  return s;
}

/* Deterministic outputs: output byte i = (sum of the non-constant input bytes + i) & 0xff. */
static void write_outputs(TfLiteContext *ctx, TfLiteNode *node) {
  uint64_t sum = 0;
  for (int i = 0; i < node->inputs->size; i++) {
    int idx = node->inputs->data[i];
    if (idx < 0) continue;
    const TfLiteTensor *t = &ctx->tensors[idx];
    if (t->allocation_type == kTfLiteMmapRo || !t->data) continue;
    sum += sum_bytes((const uint8_t *)t->data, t->bytes);
  }
  for (int i = 0; i < node->outputs->size; i++) {
    int idx = node->outputs->data[i];
    if (idx < 0) continue;
    TfLiteTensor *t = &ctx->tensors[idx];
    if (!t->data) continue;
    for (size_t j = 0; j < t->bytes; j++) ((uint8_t *)t->data)[j] = (uint8_t)((sum + j) & 0xff);
  }
}

/* A wedged device: the invoke waits for a completion that never comes (driver/driver.cc,
 * Driver::Execute: Submit() then BlockingCounter::Wait() with no deadline), so the caller blocks
 * until the process dies. Called with g_lock held; returns only by dying (an unplug while
 * wedged fails the pending transfer: abort, as in die_unplugged). */
__attribute__((noreturn)) static void block_forever_locked(Context *ctx, DevState *s) {
  s->hanging++;
  for (;;) {
    pthread_mutex_unlock(&g_lock);
    sleep_ms(50);
    pthread_mutex_lock(&g_lock);
    control_refresh_locked();
    if (!g_ctl.unplug_ignore && !usb_present_locked(ctx)) die_unplugged(ctx);
  }
}

static TfLiteStatus kernel_invoke(TfLiteContext *ctx, TfLiteNode *node) {
  struct timespec start;
  clock_gettime(CLOCK_MONOTONIC, &start);
  Kernel *k = node->user_data;
  Context *cx = k->owner->ctx;
  const char *path = cx->path;
  Control c;
  control_snapshot(&c);
  pthread_mutex_lock(&g_lock);
  long nth = cx->invokes++;
  if (!cx->wedged && listed(c.wedge, path) && fire(&c, "wedge", path)) {
    cx->wedged = true;
    log_event("wedge", path);
  }
  if (cx->wedged) block_forever_locked(cx, dev_state_locked(path));
  pthread_mutex_unlock(&g_lock);
  if (listed(c.hang, path)) { /* polite: released when the device leaves the list */
    pthread_mutex_lock(&g_lock);
    DevState *s = dev_state_locked(path);
    s->hanging++;
    while (control_refresh_locked(), listed(g_ctl.hang, path)) {
      pthread_mutex_unlock(&g_lock);
      sleep_ms(20);
      pthread_mutex_lock(&g_lock);
    }
    s->hanging--;
    c = g_ctl;
    clock_gettime(CLOCK_MONOTONIC, &start);
    pthread_mutex_unlock(&g_lock);
  }
  if (listed(c.fail_invoke, path)) { /* polite: kept for the tests that count error results */
    ctx->ReportError(ctx, "fake_edgetpu: Edge TPU %s failed to execute (simulated invoke error)",
                     path);
    return kTfLiteError;
  }
  bool abort_now = cx->type == EDGETPU_APEX_USB && listed(c.abort_invoke, path) &&
                   nth >= c.abort_after && fire(&c, "abort_invoke", path);
  /* The device runs one invoke at a time, in the order they arrive: each reserves the
   * time after the runs already reserved (another interpreter's on this device) and
   * sleeps until its own run ends, as a caller of the real runtime waits for its queued
   * request; a queued run starts the moment the previous one ends. */
  pthread_mutex_lock(&g_lock);
  DevState *s = dev_state_locked(path);
  if (s->done.tv_sec > start.tv_sec ||
      (s->done.tv_sec == start.tv_sec && s->done.tv_nsec > start.tv_nsec))
    start = s->done;
  bool swap = !s->has_token || s->token != k->token;
  s->has_token = true;
  s->token = k->token;
  if (swap) s->swaps++;
  double ms = c.invoke_ms + (swap ? c.swap_ms : 0.0);
  s->done = plus_ms(start, ms);
  pthread_mutex_unlock(&g_lock);
  if (abort_now) {
    sleep_from(start, ms / 2); /* mid-transfer */
    die_transfer_error(cx);
  }
  write_outputs(ctx, node);
  sleep_from(start, ms);
  /* One stat of the sysfs node per invoke, when the result would come in: a device gone
   * before or during this invoke fails its bulk-in transfer. */
  if (!c.unplug_ignore && !usb_present(cx)) die_unplugged(cx);
  pthread_mutex_lock(&g_lock);
  s->invokes++;
  pthread_mutex_unlock(&g_lock);
  return kTfLiteOk;
}

static TfLiteStatus delegate_prepare(TfLiteContext *ctx, TfLiteDelegate *d) {
  FakeDelegate *fd = d->data_;
  Control c;
  control_snapshot(&c);
  if (listed(c.fail_prepare, fd->ctx->path)) {
    ctx->ReportError(ctx, "fake_edgetpu: Edge TPU %s failed to prepare (simulated)", fd->ctx->path);
    return kTfLiteError;
  }
  trace("Prepare on %s (%s)", fd->ctx->path, c.simulate ? "simulate" : "passthrough");
  if (!c.simulate) return kTfLiteOk; /* passthrough: claim nothing, the CPU kernels run */

  TfLiteIntArray *plan;
  if (ctx->GetExecutionPlan(ctx, &plan) != kTfLiteOk) return kTfLiteError;
  TfLiteIntArray *tpu = malloc(sizeof(int) * (size_t)(plan->size + 1));
  TfLiteIntArray *builtin = malloc(sizeof(int) * (size_t)(plan->size + 1));
  if (!tpu || !builtin) {
    free(tpu);
    free(builtin);
    return kTfLiteError;
  }
  tpu->size = builtin->size = 0;
  for (int i = 0; i < plan->size; i++) {
    TfLiteNode *node;
    TfLiteRegistration *reg;
    int index = plan->data[i];
    if (ctx->GetNodeAndRegistration(ctx, index, &node, &reg) != kTfLiteOk) continue;
    trace("node %d: builtin %d, custom %s", index, reg->builtin_code,
          reg->custom_name ? reg->custom_name : "-");
    if (reg->custom_name && strcmp(reg->custom_name, kEdgeTpuOp) == 0)
      tpu->data[tpu->size++] = index;
    else if (!reg->custom_name)
      builtin->data[builtin->size++] = index;
  }
  /* An Edge TPU model: claim its edgetpu-custom-op nodes. A CPU model: claim every builtin node
   * (unknown custom ops stay unresolved, as they would with the real runtime). */
  TfLiteIntArray *claim = tpu->size ? tpu : builtin;
  TfLiteStatus status = kTfLiteOk;
  if (claim->size) {
    TfLiteRegistration reg;
    memset(&reg, 0, sizeof reg);
    reg.init = kernel_init;
    reg.free = kernel_free;
    reg.prepare = kernel_prepare;
    reg.invoke = kernel_invoke;
    reg.custom_name = "fake_edgetpu";
    reg.version = 1;
    status = ctx->ReplaceNodeSubsetsWithDelegateKernels(ctx, reg, claim, d);
  }
  free(tpu);
  free(builtin);
  return status;
}

/* tflite/edgetpu_delegate_for_custom_op_tflite_plugin.cc, tflite_plugin_create_delegate: NULL
 * on any failure, and the error callback is never called (the caller sees only "Failed to load
 * delegate from <library>"). */
TfLiteDelegate *tflite_plugin_create_delegate(char **keys, char **values, size_t num,
                                              void (*report_error)(const char *)) {
  (void)report_error;
  char option[64] = "", options[OPTIONS_LEN] = "";
  bool has_option = false;
  size_t used = 0;
  for (size_t i = 0; i < num; i++) {
    if (!keys[i] || !values[i]) continue;
    if (strcmp(keys[i], "device") == 0) {
      snprintf(option, sizeof option, "%s", values[i]);
      has_option = true;
    }
    int w = snprintf(options + used, sizeof options - used, "%s%s=%s", used ? ";" : "", keys[i],
                     values[i]);
    if (w > 0 && (size_t)w < sizeof options - used) used += (size_t)w;
  }
  Control c;
  control_snapshot(&c);
  sleep_ms(c.open_ms);
  pthread_mutex_lock(&g_lock);
  Context *ctx = plugin_open_locked(option, has_option, options);
  TfLiteDelegate *d = ctx ? make_delegate_locked(ctx, option) : NULL;
  pthread_mutex_unlock(&g_lock);
  if (!d) trace("create for device '%s' failed", option);
  return d;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate *d) { free_delegate(d); }

/* tflite/edgetpu_c.cc, edgetpu_create_delegate: OpenDevice(type, name, options) -- by path, the
 * one way to name a device that a concurrent enumeration change cannot redirect. With options,
 * a NULL name is CHECK-failed (an abort); without, NULL name means any device of that type. */
TfLiteDelegate *edgetpu_create_delegate(enum edgetpu_device_type type, const char *name,
                                        const struct edgetpu_option *options, size_t num_options) {
  char opts[OPTIONS_LEN] = "";
  size_t used = 0;
  if (num_options > 0) {
    if (!options) fatal("tflite/edgetpu_c.cc", 77, "Check failed: options");
    if (!name) fatal("tflite/edgetpu_c.cc", 78, "Check failed: name");
  }
  for (size_t i = 0; i < num_options; i++) {
    if (!options[i].name || !options[i].value) continue;
    int w = snprintf(opts + used, sizeof opts - used, "%s%s=%s", used ? ";" : "",
                     options[i].name, options[i].value);
    if (w > 0 && (size_t)w < sizeof opts - used) used += (size_t)w;
  }
  if (type != EDGETPU_APEX_PCI && type != EDGETPU_APEX_USB) return NULL;
  Control c;
  control_snapshot(&c);
  sleep_ms(c.open_ms);
  pthread_mutex_lock(&g_lock);
  Context *ctx = open_device_locked(type, name ? name : "", opts);
  TfLiteDelegate *d = ctx ? make_delegate_locked(ctx, "") : NULL;
  pthread_mutex_unlock(&g_lock);
  if (!d) trace("edgetpu_create_delegate(%d, %s) failed", (int)type, name ? name : "NULL");
  return d;
}

void edgetpu_free_delegate(TfLiteDelegate *d) { free_delegate(d); }

/* tflite/edgetpu_c.cc, edgetpu_version -> EdgeTpuManagerDirect::Version():
 * "BuildLabel(%s), RuntimeVersion(%d)"; api/runtime_version.h: kCurrent = 14. */
const char *edgetpu_version(void) { return "BuildLabel(fake_edgetpu), RuntimeVersion(14)"; }

/* tflite/edgetpu_c.cc, edgetpu_verbosity: 0..10 accepted; here it changes nothing. */
void edgetpu_verbosity(int verbosity) { (void)verbosity; }

/* ---- test hooks (docs/testing.md) ---- */

/* Delegates created / destroyed since load or fake_reset(). */
int fake_created(void) {
  pthread_mutex_lock(&g_lock);
  int n = g_created;
  pthread_mutex_unlock(&g_lock);
  return n;
}

int fake_destroyed(void) {
  pthread_mutex_lock(&g_lock);
  int n = g_destroyed;
  pthread_mutex_unlock(&g_lock);
  return n;
}

/* Path of the device the most recent delegate was bound to ("" if none). */
const char *fake_last_device(void) { return g_last_device; }

/* Path of the device this delegate (the pointer load_delegate returned) is bound to. */
const char *fake_delegate_device(const TfLiteDelegate *d) {
  return d && d->data_ ? ((const FakeDelegate *)d->data_)->ctx->path : "";
}

/* Successful simulated invokes on `dev` (basename or path; NULL or "*" = all devices). */
long fake_invokes(const char *dev) {
  long n = 0;
  pthread_mutex_lock(&g_lock);
  for (size_t i = 0; i < g_ndevs; i++)
    if (!dev || strcmp(dev, "*") == 0 || listed(dev, g_devs[i].path)) n += g_devs[i].invokes;
  pthread_mutex_unlock(&g_lock);
  return n;
}

/* Parameter reloads (the swap penalty applied, including the first load) on `dev`. */
long fake_swaps(const char *dev) {
  pthread_mutex_lock(&g_lock);
  DevState *s = dev ? dev_find_locked(dev) : NULL;
  long n = s ? s->swaps : 0;
  pthread_mutex_unlock(&g_lock);
  return n;
}

/* Invokes currently blocked by `hang` on `dev`. */
int fake_hanging(const char *dev) {
  pthread_mutex_lock(&g_lock);
  DevState *s = dev ? dev_find_locked(dev) : NULL;
  int n = s ? s->hanging : 0;
  pthread_mutex_unlock(&g_lock);
  return n;
}

/* The parameter caching token last run on `dev` (0 if none). */
unsigned long long fake_device_token(const char *dev) {
  pthread_mutex_lock(&g_lock);
  DevState *s = dev ? dev_find_locked(dev) : NULL;
  unsigned long long t = s && s->has_token ? s->token : 0;
  pthread_mutex_unlock(&g_lock);
  return t;
}

/* The token of the most recently initialised simulated kernel (0 if none). */
unsigned long long fake_last_token(void) {
  pthread_mutex_lock(&g_lock);
  unsigned long long t = g_last_token;
  pthread_mutex_unlock(&g_lock);
  return t;
}

/* Contexts opened (not shared) since load or fake_reset(). */
int fake_contexts_opened(void) {
  pthread_mutex_lock(&g_lock);
  int n = g_opened;
  pthread_mutex_unlock(&g_lock);
  return n;
}

/* The options of the open context on `dev` ("k=v;k=v" as the first open gave them), and how many
 * delegates use it; "" and 0 when this process has no context on it. Copied to a static buffer:
 * call from one thread. */
const char *fake_context_options(const char *dev) {
  static char out[OPTIONS_LEN];
  out[0] = '\0';
  pthread_mutex_lock(&g_lock);
  for (size_t i = 0; i < MAX_DEVICES; i++)
    if (g_ctx[i].used && listed(dev, g_ctx[i].path))
      snprintf(out, sizeof out, "%s", g_ctx[i].options);
  pthread_mutex_unlock(&g_lock);
  return out;
}

int fake_context_refs(const char *dev) {
  int n = 0;
  pthread_mutex_lock(&g_lock);
  for (size_t i = 0; i < MAX_DEVICES; i++)
    if (g_ctx[i].used && listed(dev, g_ctx[i].path)) n = g_ctx[i].refs;
  pthread_mutex_unlock(&g_lock);
  return n;
}

/* Zero the counters and forget which model each device last ran (devices stay known). */
void fake_reset(void) {
  pthread_mutex_lock(&g_lock);
  g_created = g_destroyed = g_opened = 0;
  g_last_device[0] = '\0';
  g_last_token = 0;
  for (size_t i = 0; i < g_ndevs; i++) {
    g_devs[i].has_token = false;
    g_devs[i].token = 0;
    g_devs[i].invokes = g_devs[i].swaps = 0;
  }
  pthread_mutex_unlock(&g_lock);
}
