//! The `#[fork_core::main]` attribute (re-exported by fork-core).

use proc_macro::TokenStream;
use quote::quote;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{ItemFn, Meta, Token};

/// See `fork_core::main`.
#[proc_macro_attribute]
pub fn main(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand(attr.into(), item.into()) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(
    attr: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> syn::Result<proc_macro2::TokenStream> {
    let mut func: ItemFn = syn::parse2(item)?;
    let mut early = false;
    let mut current_thread = false;
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr)?;
    for meta in metas {
        match &meta {
            Meta::Path(p) if p.is_ident("early_template") => early = true,
            Meta::NameValue(nv) if nv.path.is_ident("flavor") => {
                let value = &nv.value;
                let flavor = quote!(#value).to_string();
                match flavor.as_str() {
                    "\"current_thread\"" => current_thread = true,
                    "\"multi_thread\"" => current_thread = false,
                    _ => {
                        return Err(syn::Error::new_spanned(
                            value,
                            "flavor must be \"current_thread\" or \"multi_thread\"",
                        ));
                    }
                }
            }
            _ => {
                return Err(syn::Error::new_spanned(
                    meta,
                    "expected `early_template` or `flavor = \"...\"`",
                ));
            }
        }
    }
    if func.sig.asyncness.take().is_none() {
        return Err(syn::Error::new_spanned(
            func.sig.fn_token,
            "#[fork_core::main] goes on an `async fn main`",
        ));
    }
    let builder = if current_thread {
        quote!(new_current_thread)
    } else {
        quote!(new_multi_thread)
    };
    let body = &func.block;
    let init = quote! {
        ::fork_core::Init::new().early_template(#early).init();
    };
    func.block = syn::parse2(quote! {{
        #init
        ::fork_core::__private::tokio::runtime::Builder::#builder()
            .enable_all()
            .build()
            .expect("failed to build the tokio runtime")
            .block_on(async move #body)
    }})?;
    Ok(quote!(#func))
}
