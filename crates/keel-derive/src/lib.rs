//! `#[derive(Event)]`: implements `keel_core::Event` for a struct in one line.
//!
//! Attributes, all optional, in `#[event(...)]`:
//! - `type = "order.placed"`: the CloudEvents type (default: the struct's name);
//! - `version = 2`: the data schema version (default 1);
//! - `key = field`: the field whose `to_string()` is the partition key;
//! - `crate = path`: where `keel_core` is (default: found from the crate's
//!   dependencies: `keel-core` itself, or `keel::core` through the facade).
#![warn(missing_docs)]

use proc_macro::TokenStream;
use quote::quote;
use syn::{DeriveInput, Ident, LitInt, LitStr, Path, parse_macro_input};

#[proc_macro_derive(Event, attributes(event))]
/// `#[derive(Event)]`: implements `keel_core::Event` for a struct or enum (its type name,
/// version and source come from `#[event(...)]`; see `keel_core::Event`).
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input).unwrap_or_else(syn::Error::into_compile_error).into()
}

fn expand(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let mut ty: Option<LitStr> = None;
    let mut version: Option<LitInt> = None;
    let mut key: Option<Ident> = None;
    let mut krate: Option<Path> = None;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("event")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("type") {
                ty = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("version") {
                version = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("key") {
                let value = meta.value()?;
                key = Some(if value.peek(LitStr) {
                    value.parse::<LitStr>()?.parse()?
                } else {
                    value.parse()?
                });
            } else if meta.path.is_ident("crate") {
                krate = Some(meta.value()?.parse()?);
            } else {
                return Err(meta.error("expected `type`, `version`, `key` or `crate`"));
            }
            Ok(())
        })?;
    }
    if let Some(ty) = &ty
        && ty.value().is_empty()
    {
        return Err(syn::Error::new(ty.span(), "an event type must not be empty"));
    }
    if let Some(key) = &key {
        let has_field = match &input.data {
            syn::Data::Struct(s) => {
                s.fields.iter().any(|f| f.ident.as_ref().is_some_and(|i| i == key))
            }
            _ => false,
        };
        if !has_field {
            return Err(syn::Error::new(key.span(), format!("no field `{key}` in this struct")));
        }
    }
    let name = &input.ident;
    let krate = krate.map_or_else(core_crate, |p| quote!(#p));
    let type_name = ty.map_or_else(|| name.to_string(), |t| t.value());
    let version = match version {
        Some(v) => {
            let v: u32 = v.base10_parse()?;
            quote!(const SCHEMA_VERSION: u32 = #v;)
        }
        None => quote!(),
    };
    let key = key.map(|field| {
        quote! {
            fn partition_key(&self) -> ::core::option::Option<::std::string::String> {
                ::core::option::Option::Some(::std::string::ToString::to_string(&self.#field))
            }
        }
    });
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics #krate::Event for #name #ty_generics #where_clause {
            const TYPE: &'static str = #type_name;
            #version
            #key
        }
    })
}

/// Where `keel_core` is for the crate being compiled: `::keel_core` when it depends on
/// `keel-core` itself, `::keel::core` when it depends on the `keel` facade (as users'
/// crates do), whatever name the dependency was given.
fn core_crate() -> proc_macro2::TokenStream {
    use proc_macro_crate::{FoundCrate, crate_name};
    match crate_name("keel-core") {
        Ok(FoundCrate::Name(name)) => {
            let name = Ident::new(&name, proc_macro2::Span::call_site());
            quote!(::#name)
        }
        Ok(FoundCrate::Itself) => quote!(::keel_core),
        Err(_) => match crate_name("keel") {
            Ok(FoundCrate::Name(name)) => {
                let name = Ident::new(&name, proc_macro2::Span::call_site());
                quote!(::#name::core)
            }
            Ok(FoundCrate::Itself) => quote!(::keel::core),
            Err(_) => quote!(::keel_core),
        },
    }
}
