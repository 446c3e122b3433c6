/* libfake_edgetpu.so: a test stand-in for libedgetpu.so.1 (see docs/testing.md).
 *
 * It implements what edgetpud uses of the real library:
 *   - the TensorFlow Lite external-delegate plugin ABI (tflite_plugin_create_delegate /
 *     tflite_plugin_destroy_delegate), so tflite_runtime.load_delegate() runs its real path;
 *   - edgetpu_list_devices() / edgetpu_free_devices() from edgetpu_c.h, read from sysfs, so under
 *     umockdev-wrapper it lists the testbed's accelerators in libedgetpu's order.
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
 *   fail_open=<dev>,...         create returns NULL ("Failed to open device")
 *   fail_prepare=<dev>,...      delegate Prepare fails (RuntimeError at Interpreter(...))
 *   fail_invoke=<dev>,...       invoke returns kTfLiteError (simulate mode)
 *   hang=<dev>,...              invoke blocks until <dev> leaves the list (simulate mode)
 * Lines starting with # are comments. $FAKE_EDGETPU_LOG=1 traces to stderr.
 * <dev> is a listed device's path basename ("2-3.1", "apex_0") or full path; "*" means all.
 *
 * Test hooks (ctypes.CDLL on the same path returns the handle load_delegate opened) are the
 * functions named fake_*() at the end of this file. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
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

/* ---- control file ---- */

#define LIST_LEN 1024
#define PATH_LEN 256

typedef struct {
  bool simulate;
  double invoke_ms, swap_ms, open_ms;
  char fail_open[LIST_LEN], fail_prepare[LIST_LEN], fail_invoke[LIST_LEN], hang[LIST_LEN];
} Control;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER; /* guards everything below */
static Control g_ctl = {false, 2.6, 0.0, 0.0, "", "", "", ""};
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

/* USB accelerators in firmware-download mode first, then ready ones, then PCIe modules in readdir
 * order of /sys/class/apex; within each group, readdir order (like libedgetpu: not stable). */
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

/* ---- the delegate ---- */

typedef struct {
  char option[64];     /* the `device` option as given */
  char path[PATH_LEN]; /* the physical device it is bound to */
} FakeDelegate;

typedef struct {
  FakeDelegate *owner;
  uint64_t token;
} Kernel;

/* Resolve "", ":N", "usb", "usb:N", "pci", "pci:N" against our own listing, as libedgetpu does. */
static bool resolve(const char *option, char *path_out, char *why, size_t why_len) {
  Found found[MAX_DEVICES];
  size_t n = find_devices(found, MAX_DEVICES);
  int want_type = -1;
  const char *index = NULL;
  if (strncmp(option, "usb", 3) == 0) {
    want_type = EDGETPU_APEX_USB;
    index = option + 3;
  } else if (strncmp(option, "pci", 3) == 0) {
    want_type = EDGETPU_APEX_PCI;
    index = option + 3;
  } else {
    index = option;
  }
  long wanted = 0;
  if (*index) {
    char *end = NULL;
    if (*index != ':' || !index[1]) goto bad;
    wanted = strtol(index + 1, &end, 10);
    if (*end || wanted < 0) goto bad;
  }
  for (size_t i = 0; i < n; i++) {
    if (want_type >= 0 && (int)found[i].type != want_type) continue;
    if (wanted-- == 0) {
      snprintf(path_out, PATH_LEN, "%s", found[i].path);
      return true;
    }
  }
  snprintf(why, why_len, "no such Edge TPU (%zu listed)", n);
  return false;
bad:
  snprintf(why, why_len, "unsupported device string (use \"\", \":N\", \"usb[:N]\", \"pci[:N]\")");
  return false;
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

static TfLiteStatus kernel_invoke(TfLiteContext *ctx, TfLiteNode *node) {
  struct timespec start;
  clock_gettime(CLOCK_MONOTONIC, &start);
  Kernel *k = node->user_data;
  const char *path = k->owner->path;
  Control c;
  control_snapshot(&c);
  if (listed(c.hang, path)) {
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
  if (listed(c.fail_invoke, path)) {
    ctx->ReportError(ctx, "fake_edgetpu: Edge TPU %s failed to execute (simulated invoke error)",
                     path);
    return kTfLiteError;
  }
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
  write_outputs(ctx, node);
  sleep_from(start, ms);
  pthread_mutex_lock(&g_lock);
  s->invokes++;
  pthread_mutex_unlock(&g_lock);
  return kTfLiteOk;
}

static TfLiteStatus delegate_prepare(TfLiteContext *ctx, TfLiteDelegate *d) {
  FakeDelegate *fd = d->data_;
  Control c;
  control_snapshot(&c);
  if (listed(c.fail_prepare, fd->path)) {
    ctx->ReportError(ctx, "fake_edgetpu: Edge TPU %s failed to prepare (simulated)", fd->path);
    return kTfLiteError;
  }
  trace("Prepare on %s (%s)", fd->path, c.simulate ? "simulate" : "passthrough");
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

TfLiteDelegate *tflite_plugin_create_delegate(char **keys, char **values, size_t num,
                                              void (*report_error)(const char *)) {
  char option[64] = "", path[PATH_LEN], why[160], msg[512];
  for (size_t i = 0; i < num; i++)
    if (keys[i] && values[i] && strcmp(keys[i], "device") == 0)
      snprintf(option, sizeof option, "%s", values[i]);
  Control c;
  control_snapshot(&c);
  sleep_ms(c.open_ms);
  if (!resolve(option, path, why, sizeof why)) {
    snprintf(msg, sizeof msg, "fake_edgetpu: Failed to open device '%s': %s", option, why);
    trace("%s", msg);
    if (report_error) report_error(msg);
    return NULL;
  }
  if (listed(c.fail_open, path)) {
    snprintf(msg, sizeof msg, "fake_edgetpu: Failed to open device '%s' (%s): simulated failure",
             option, path);
    if (report_error) report_error(msg);
    return NULL;
  }
  FakeDelegate *fd = calloc(1, sizeof *fd);
  TfLiteDelegate *d = calloc(1, sizeof *d);
  if (!fd || !d) {
    free(fd);
    free(d);
    if (report_error) report_error("fake_edgetpu: out of memory");
    return NULL;
  }
  snprintf(fd->option, sizeof fd->option, "%s", option);
  snprintf(fd->path, sizeof fd->path, "%s", path);
  d->data_ = fd;
  d->Prepare = delegate_prepare;
  /* kTfLiteDelegateFlagsAllowDynamicTensors: without it ModifyGraphWithDelegate first prepares
   * the whole graph, and an edgetpu-custom-op fails as unresolved before we can claim it. */
  d->flags = 1;
  trace("created delegate for device '%s' on %s", option, path);
  pthread_mutex_lock(&g_lock);
  g_created++;
  snprintf(g_last_device, sizeof g_last_device, "%s", path);
  dev_state_locked(path);
  pthread_mutex_unlock(&g_lock);
  return d;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate *d) {
  if (!d) return;
  pthread_mutex_lock(&g_lock);
  g_destroyed++;
  pthread_mutex_unlock(&g_lock);
  free(d->data_);
  free(d);
}

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
  return d && d->data_ ? ((const FakeDelegate *)d->data_)->path : "";
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

/* Zero the counters and forget which model each device last ran (devices stay known). */
void fake_reset(void) {
  pthread_mutex_lock(&g_lock);
  g_created = g_destroyed = 0;
  g_last_device[0] = '\0';
  g_last_token = 0;
  for (size_t i = 0; i < g_ndevs; i++) {
    g_devs[i].has_token = false;
    g_devs[i].token = 0;
    g_devs[i].invokes = g_devs[i].swaps = 0;
  }
  pthread_mutex_unlock(&g_lock);
}
