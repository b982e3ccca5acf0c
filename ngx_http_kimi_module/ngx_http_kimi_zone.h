
/*
 * The NAME:SIZE argument of the module's shared-memory zone directives
 * (kimi_token_budget_zone, kimi_responses_store), read one way for both
 * modules of the .so (ngx_http_kimi_zone.c).
 */

#ifndef _NGX_HTTP_KIMI_ZONE_H_INCLUDED_
#define _NGX_HTTP_KIMI_ZONE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


/* arg "NAME:SIZE" into name and size (at least 8 pages); logs what is
 * wrong and returns NGX_CONF_ERROR otherwise */
char *ngx_http_kimi_zone_arg(ngx_conf_t *cf, ngx_str_t *arg, ngx_str_t *name,
    ssize_t *size);


#endif /* _NGX_HTTP_KIMI_ZONE_H_INCLUDED_ */
