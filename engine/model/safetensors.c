/*
 * One .safetensors file, mmapped and validated.
 *
 * Owns:   the mapping, the parsed header (names, dtypes, shapes, offsets)
 *         and a name -> tensor hash for lookups.
 * Never:  trusts the file: the header length, every offset, every shape and
 *         byte count is checked before a pointer into the mapping is handed
 *         out; errors name the file and the tensor.
 * Holds:  after kimi_st_open() succeeds, every tensor's [data, data +
 *         n_bytes) lies inside the file and no two tensors overlap.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "model.h"


#define KIMI_ST_MAX_HEADER   (100u << 20)     /* as the reference reader */
#define KIMI_ST_MAX_TENSORS  (1u << 22)


struct kimi_st {
    char               *path;
    int                 fd;
    uint8_t            *map;
    uint64_t            size;
    const uint8_t      *data;             /* first byte after the header */
    uint64_t            data_size;
    uint32_t            n;
    kimi_st_tensor_t   *t;                /* [n] */
    char               *names;            /* one block for all names */
    uint32_t           *hash;             /* [hash_cap]: index + 1, 0 empty */
    uint32_t            hash_cap;
};


static const struct {
    const char    *name;
    kimi_dtype_e   dtype;
    uint32_t       size;
} kimi_st_dtypes[] = {
    { "F8_E4M3", KIMI_DTYPE_F8_E4M3, 1 },
    { "BF16",    KIMI_DTYPE_BF16,    2 },
    { "F32",     KIMI_DTYPE_F32,     4 },
    { "F16",     KIMI_DTYPE_F16,     2 },
    { "F64",     KIMI_DTYPE_OTHER,   8 },
    { "F8_E5M2", KIMI_DTYPE_OTHER,   1 },
    { "I64",     KIMI_DTYPE_OTHER,   8 },
    { "U64",     KIMI_DTYPE_OTHER,   8 },
    { "I32",     KIMI_DTYPE_OTHER,   4 },
    { "U32",     KIMI_DTYPE_OTHER,   4 },
    { "I16",     KIMI_DTYPE_OTHER,   2 },
    { "U16",     KIMI_DTYPE_OTHER,   2 },
    { "I8",      KIMI_DTYPE_OTHER,   1 },
    { "U8",      KIMI_DTYPE_OTHER,   1 },
    { "BOOL",    KIMI_DTYPE_OTHER,   1 },
};


const char *
kimi_dtype_name(kimi_dtype_e dt)
{
    switch (dt) {
    case KIMI_DTYPE_F8_E4M3: return "F8_E4M3";
    case KIMI_DTYPE_BF16:    return "BF16";
    case KIMI_DTYPE_F32:     return "F32";
    case KIMI_DTYPE_F16:     return "F16";
    default:                 return "other";
    }
}


static uint32_t
kimi_st_hash_str(const char *s)
{
    uint32_t  h = 2166136261u;           /* FNV-1a */

    while (*s) {
        h = (h ^ (uint8_t) *s++) * 16777619u;
    }

    return h;
}


static int
kimi_st_cmp_offset(const void *a, const void *b)
{
    const kimi_st_tensor_t  *x = *(const kimi_st_tensor_t *const *) a;
    const kimi_st_tensor_t  *y = *(const kimi_st_tensor_t *const *) b;

    if (x->data != y->data) {
        return (const uint8_t *) x->data < (const uint8_t *) y->data ? -1 : 1;
    }

    return x->n_bytes < y->n_bytes ? -1 : (x->n_bytes > y->n_bytes);
}


/* Parses one header entry into t; names are copied to *np. */
static int
kimi_st_entry(kimi_st_t *st, const char *name, json_t *v,
    kimi_st_tensor_t *t, char **np, kimi_err_t *err)
{
    json_t    *dt = json_object_get(v, "dtype");
    json_t    *shape = json_object_get(v, "shape");
    json_t    *offs = json_object_get(v, "data_offsets");
    json_t    *d;
    uint64_t   elems = 1, esize = 0, b, e;
    size_t     i, len;

    if (!json_is_object(v) || !json_is_string(dt) || !json_is_array(shape)
        || !json_is_array(offs) || json_array_size(offs) != 2)
    {
        return kimi_err_set(err, KIMI_EFORMAT, "%s: tensor \"%s\": header "
                            "entry needs dtype, shape and data_offsets[2]",
                            st->path, name);
    }

    for (i = 0; i < sizeof(kimi_st_dtypes) / sizeof(kimi_st_dtypes[0]); i++) {
        if (strcmp(json_string_value(dt), kimi_st_dtypes[i].name) == 0) {
            t->dtype = kimi_st_dtypes[i].dtype;
            t->dtype_name = kimi_st_dtypes[i].name;
            esize = kimi_st_dtypes[i].size;
            break;
        }
    }

    if (esize == 0) {
        return kimi_err_set(err, KIMI_EFORMAT, "%s: tensor \"%s\": unknown "
                            "dtype \"%.32s\"", st->path, name,
                            json_string_value(dt));
    }

    if (json_array_size(shape) > 4) {
        return kimi_err_set(err, KIMI_EUNSUPPORTED, "%s: tensor \"%s\": "
                            "%zu dimensions (at most 4)", st->path, name,
                            json_array_size(shape));
    }

    t->n_dims = (uint32_t) json_array_size(shape);

    json_array_foreach(shape, i, d) {
        if (!json_is_integer(d) || json_integer_value(d) < 0
            || json_integer_value(d) > (json_int_t) 1 << 40)
        {
            return kimi_err_set(err, KIMI_EFORMAT, "%s: tensor \"%s\": "
                                "shape[%zu] is not a sane dimension",
                                st->path, name, i);
        }

        t->shape[i] = (uint64_t) json_integer_value(d);

        if (t->shape[i] != 0 && elems > (UINT64_MAX / 16) / t->shape[i]) {
            return kimi_err_set(err, KIMI_EFORMAT, "%s: tensor \"%s\": "
                                "shape overflows", st->path, name);
        }

        elems *= t->shape[i];
    }

    if (!json_is_integer(json_array_get(offs, 0))
        || !json_is_integer(json_array_get(offs, 1))
        || json_integer_value(json_array_get(offs, 0)) < 0
        || json_integer_value(json_array_get(offs, 1)) < 0)
    {
        return kimi_err_set(err, KIMI_EFORMAT, "%s: tensor \"%s\": "
                            "data_offsets are not non-negative integers",
                            st->path, name);
    }

    b = (uint64_t) json_integer_value(json_array_get(offs, 0));
    e = (uint64_t) json_integer_value(json_array_get(offs, 1));

    if (b > e || e > st->data_size) {
        return kimi_err_set(err, KIMI_EFORMAT, "%s: tensor \"%s\": "
                            "data_offsets [%llu, %llu] outside the %llu data "
                            "bytes (truncated file?)", st->path, name,
                            (unsigned long long) b, (unsigned long long) e,
                            (unsigned long long) st->data_size);
    }

    if (e - b != elems * esize) {
        return kimi_err_set(err, KIMI_EFORMAT, "%s: tensor \"%s\": %llu "
                            "bytes for %llu %s elements", st->path, name,
                            (unsigned long long) (e - b),
                            (unsigned long long) elems,
                            json_string_value(dt));
    }

    len = strlen(name) + 1;
    memcpy(*np, name, len);
    t->name = *np;
    *np += len;
    t->data = st->data + b;
    t->n_bytes = e - b;
    return 0;
}


static int
kimi_st_parse(kimi_st_t *st, json_t *hdr, kimi_err_t *err)
{
    const char         *name;
    json_t             *v;
    kimi_st_tensor_t  **byoff;
    size_t              names_len = 0, n = 0;
    char               *np;
    int                 rc;

    json_object_foreach(hdr, name, v) {
        if (strcmp(name, "__metadata__") != 0) {
            n++;
            names_len += strlen(name) + 1;
        }
    }

    if (n > KIMI_ST_MAX_TENSORS) {
        return kimi_err_set(err, KIMI_EFORMAT, "%s: %zu tensors (absurd)",
                            st->path, n);
    }

    st->t = calloc(n ? n : 1, sizeof(kimi_st_tensor_t));
    st->names = malloc(names_len ? names_len : 1);
    st->hash_cap = 16;

    while (st->hash_cap < 2 * n) {
        st->hash_cap *= 2;
    }

    st->hash = calloc(st->hash_cap, sizeof(uint32_t));

    if (st->t == NULL || st->names == NULL || st->hash == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "%s: out of memory", st->path);
    }

    np = st->names;

    json_object_foreach(hdr, name, v) {
        if (strcmp(name, "__metadata__") == 0) {
            continue;
        }

        if ((rc = kimi_st_entry(st, name, v, &st->t[st->n], &np, err)) != 0) {
            return rc;
        }

        for (uint32_t h = kimi_st_hash_str(name) & (st->hash_cap - 1);;
             h = (h + 1) & (st->hash_cap - 1))
        {
            if (st->hash[h] == 0) {
                st->hash[h] = st->n + 1;
                break;
            }
        }

        st->n++;
    }

    /* no two tensors may share bytes (a crafted file could alias them) */
    byoff = malloc((n ? n : 1) * sizeof(*byoff));

    if (byoff == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "%s: out of memory", st->path);
    }

    for (uint32_t i = 0; i < st->n; i++) {
        byoff[i] = &st->t[i];
    }

    qsort(byoff, st->n, sizeof(*byoff), kimi_st_cmp_offset);

    for (uint32_t i = 1; i < st->n; i++) {
        const kimi_st_tensor_t  *a = byoff[i - 1], *b = byoff[i];

        if ((const uint8_t *) a->data + a->n_bytes
            > (const uint8_t *) b->data)
        {
            rc = kimi_err_set(err, KIMI_EFORMAT, "%s: tensors \"%s\" and "
                              "\"%s\" overlap", st->path, a->name, b->name);
            free(byoff);
            return rc;
        }
    }

    free(byoff);
    return 0;
}


int
kimi_st_open(kimi_st_t **out, const char *path, kimi_err_t *err)
{
    kimi_st_t     *st;
    struct stat    sb;
    json_error_t   je;
    json_t        *hdr = NULL;
    uint64_t       hlen;
    int            rc;

    st = calloc(1, sizeof(*st));

    if (st == NULL || (st->path = strdup(path)) == NULL) {
        free(st);
        return kimi_err_set(err, KIMI_ENOMEM, "%s: out of memory", path);
    }

    st->fd = -1;
    st->fd = open(path, O_RDONLY | O_CLOEXEC);

    if (st->fd < 0) {
        rc = kimi_err_set(err, KIMI_EIO, "%s: open: %s", path,
                          strerror(errno));
        goto failed;
    }

    if (fstat(st->fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        rc = kimi_err_set(err, KIMI_EIO, "%s: not a regular file", path);
        goto failed;
    }

    st->size = (uint64_t) sb.st_size;

    if (st->size < 8) {
        rc = kimi_err_set(err, KIMI_EFORMAT, "%s: %llu bytes, too short for "
                          "a safetensors header", path,
                          (unsigned long long) st->size);
        goto failed;
    }

    st->map = mmap(NULL, st->size, PROT_READ, MAP_PRIVATE, st->fd, 0);

    if (st->map == MAP_FAILED) {
        st->map = NULL;
        rc = kimi_err_set(err, KIMI_EIO, "%s: mmap: %s", path,
                          strerror(errno));
        goto failed;
    }

    hlen = 0;

    for (int i = 7; i >= 0; i--) {
        hlen = (hlen << 8) | st->map[i];   /* little-endian u64 */
    }

    if (hlen < 2 || hlen > KIMI_ST_MAX_HEADER || hlen > st->size - 8) {
        rc = kimi_err_set(err, KIMI_EFORMAT, "%s: header length %llu does "
                          "not fit the %llu-byte file", path,
                          (unsigned long long) hlen,
                          (unsigned long long) st->size);
        goto failed;
    }

    st->data = st->map + 8 + hlen;
    st->data_size = st->size - 8 - hlen;

    hdr = json_loadb((const char *) st->map + 8, hlen, JSON_REJECT_DUPLICATES,
                     &je);

    if (hdr == NULL || !json_is_object(hdr)) {
        rc = kimi_err_set(err, KIMI_EFORMAT, "%s: header is not a JSON "
                          "object (column %d: %s)", path, je.column, je.text);
        goto failed;
    }

    if ((rc = kimi_st_parse(st, hdr, err)) != 0) {
        goto failed;
    }

    json_decref(hdr);
    *out = st;
    return 0;

failed:

    json_decref(hdr);
    kimi_st_close(st);
    return rc;
}


void
kimi_st_close(kimi_st_t *st)
{
    if (st == NULL) {
        return;
    }

    if (st->map != NULL) {
        munmap(st->map, st->size);
    }

    if (st->fd >= 0) {
        close(st->fd);
    }

    free(st->t);
    free(st->names);
    free(st->hash);
    free(st->path);
    free(st);
}


uint32_t
kimi_st_count(const kimi_st_t *st)
{
    return st->n;
}


const kimi_st_tensor_t *
kimi_st_get(const kimi_st_t *st, uint32_t i)
{
    return i < st->n ? &st->t[i] : NULL;
}


const kimi_st_tensor_t *
kimi_st_find(const kimi_st_t *st, const char *name)
{
    for (uint32_t h = kimi_st_hash_str(name) & (st->hash_cap - 1);;
         h = (h + 1) & (st->hash_cap - 1))
    {
        if (st->hash[h] == 0) {
            return NULL;
        }

        if (strcmp(st->t[st->hash[h] - 1].name, name) == 0) {
            return &st->t[st->hash[h] - 1];
        }
    }
}


const char *
kimi_st_path(const kimi_st_t *st)
{
    return st->path;
}


int
kimi_st_prefault(kimi_st_t *st, kimi_err_t *err)
{
    if (madvise(st->map, st->size, MADV_WILLNEED) != 0) {
        return kimi_err_set(err, KIMI_EIO, "%s: madvise: %s", st->path,
                            strerror(errno));
    }

    return 0;
}
