//! `#[derive(Event)]`: implements `keel_core::Event` for a struct in one line.
//!
//! Attributes, all optional, in `#[event(...)]`:
//! - `type = "order.placed"`: the CloudEvents type (default: the struct's name);
//! - `version = 2`: the data schema version (default 1);
//! - `key = field`: the field whose `to_string()` is the partition key;
//! - `upcast(from = N, with = f)` (JSON step, `fn(Value) -> Result<Value, E>`) or
//!   `upcast(from = N, typed = f)` (typed step, `fn(Old) -> New`): brings data at
//!   schema version N to N+1; one per N below `version`, applied in turn when an older
//!   event is decoded (see `keel_core::upcast`);
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
    let mut steps: Vec<Step> = Vec::new();
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
            } else if meta.path.is_ident("upcast") {
                steps.push(Step::parse(&meta)?);
            } else {
                return Err(meta.error("expected `type`, `version`, `key`, `upcast` or `crate`"));
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
    let version_number = match &version {
        Some(v) => v.base10_parse::<u32>()?,
        None => 1,
    };
    if version_number == 0 {
        return Err(syn::Error::new_spanned(&version, "schema versions start at 1"));
    }
    let upcast = upcast_steps(&steps, version_number, &krate)?;
    let version = match version {
        Some(_) => quote!(const SCHEMA_VERSION: u32 = #version_number;),
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
            #upcast
        }
    })
}

/// One `upcast(from = N, with = f)` or `upcast(from = N, typed = f)`.
struct Step {
    from: LitInt,
    function: Path,
    typed: bool,
}

impl Step {
    fn parse(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<Self> {
        let mut from: Option<LitInt> = None;
        let mut function: Option<(Path, bool)> = None;
        meta.parse_nested_meta(|inner| {
            if inner.path.is_ident("from") {
                from = Some(inner.value()?.parse()?);
            } else if inner.path.is_ident("with") || inner.path.is_ident("typed") {
                if function.is_some() {
                    return Err(inner.error("one of `with` or `typed` per step"));
                }
                let typed = inner.path.is_ident("typed");
                function = Some((inner.value()?.parse()?, typed));
            } else {
                return Err(inner.error("expected `from`, `with` or `typed`"));
            }
            Ok(())
        })?;
        let from = from.ok_or_else(|| meta.error("an upcast step needs `from = N`"))?;
        let (function, typed) =
            function.ok_or_else(|| meta.error("an upcast step needs `with = f` or `typed = f`"))?;
        Ok(Self { from, function, typed })
    }
}

/// `fn upcast_step` for the declared steps, each checked against the event's version.
fn upcast_steps(
    steps: &[Step],
    version: u32,
    krate: &proc_macro2::TokenStream,
) -> syn::Result<Option<proc_macro2::TokenStream>> {
    if steps.is_empty() {
        return Ok(None);
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut arms = Vec::with_capacity(steps.len());
    for step in steps {
        let from: u32 = step.from.base10_parse()?;
        if from == 0 || from >= version {
            return Err(syn::Error::new(
                step.from.span(),
                format!(
                    "an upcast step goes from a version in 1..{version} (the event's version is {version})"
                ),
            ));
        }
        if !seen.insert(from) {
            return Err(syn::Error::new(
                step.from.span(),
                format!("two upcast steps from version {from}"),
            ));
        }
        let function = &step.function;
        let run = if step.typed {
            quote!(#krate::upcast::typed_step(#function, data))
        } else {
            quote!(#krate::upcast::json_step(#function, data))
        };
        arms.push(quote!(#from => ::core::option::Option::Some(#run),));
    }
    Ok(Some(quote! {
        fn upcast_step(
            from: u32,
            data: #krate::JsonValue,
        ) -> ::core::option::Option<::core::result::Result<#krate::JsonValue, #krate::upcast::StepError>> {
            match from {
                #(#arms)*
                _ => ::core::option::Option::None,
            }
        }
    }))
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
